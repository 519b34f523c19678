using System.Text;
using System.Text.RegularExpressions;

namespace Merlin.ManPages;

/// <summary>A man page in roff (man(7) macros), written section by section; text is escaped as it is added.</summary>
public sealed partial class Roff
{
    private readonly StringBuilder _text = new();

    public Roff(string name, int section, string version, string date)
    {
        _text.AppendLine($".TH {Escape(name.ToUpperInvariant())} {section} \"{date}\" \"Merlin {Escape(version)}\" \"Merlin\"");
    }

    public Roff Section(string title) => Line($".SH {Quote(title.ToUpperInvariant())}");

    public Roff Subsection(string title) => Line($".SS {Quote(title)}");

    public Roff Paragraph(string text) => Line(".PP").Line(Escape(text));

    /// <summary>A tagged paragraph: <paramref name="tag"/> (already roff, e.g. from <see cref="Bold"/>) over an indented text.</summary>
    public Roff Tagged(string tag, string text) => Line(".TP").Line(tag).Line(Escape(text));

    /// <summary>Verbatim lines, e.g. a synopsis or an example.</summary>
    public Roff Example(IEnumerable<string> lines)
    {
        Line(".PP").Line(".nf").Line(".RS 4");
        foreach (var l in lines) Line(Escape(l));
        return Line(".RE").Line(".fi");
    }

    public static string Bold(string text) => $"\\fB{Escape(text)}\\fR";

    public static string Italic(string text) => $"\\fI{Escape(text)}\\fR";

    /// <summary>roff's special characters: a backslash, a dash (a hyphen would not copy-paste as a minus), a leading dot or quote.</summary>
    public static string Escape(string text)
    {
        var escaped = text.Replace("\\", "\\e", StringComparison.Ordinal).Replace("-", "\\-", StringComparison.Ordinal);
        return LeadingControl().Replace(escaped, "\\&$1");
    }

    private static string Quote(string text) => $"\"{Escape(text).Replace("\"", "\\(dq", StringComparison.Ordinal)}\"";

    private Roff Line(string line)
    {
        _text.Append(line).Append('\n');
        return this;
    }

    public override string ToString() => _text.ToString();

    [GeneratedRegex(@"^([.'])", RegexOptions.Multiline)]
    private static partial Regex LeadingControl();
}
