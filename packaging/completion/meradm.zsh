#compdef meradm
# zsh completion for meradm. meradm answers itself (System.CommandLine's [suggest:POSITION] directive), so the
# completions are always those of the installed version: commands, options, and option values it knows.
local line=${(j: :)words[1,CURRENT]}
local -a suggestions
suggestions=(${(f)"$(${words[1]} "[suggest:${#line}]" "$line" 2>/dev/null)"})
compadd -a suggestions
