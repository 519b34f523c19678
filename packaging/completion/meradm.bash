# bash completion for meradm. meradm answers itself (System.CommandLine's [suggest:POSITION] directive), so the
# completions are always those of the installed version: commands, options, and option values it knows.
_meradm()
{
	local line=${COMP_LINE:0:COMP_POINT}
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" "[suggest:${#line}]" "$line" 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
}
complete -F _meradm meradm
