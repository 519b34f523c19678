using System.CommandLine;

namespace Merlin.ManPages;

/// <summary>A program's man page from its System.CommandLine tree: the root's options, then every command, depth first.</summary>
public static class CommandPage
{
    public static string Render(RootCommand root, string name, int section, string version, string date, IReadOnlyList<(string Code, string Meaning)> exitCodes, string? files = null)
    {
        var page = new Roff(name, section, version, date)
            .Section("name").Paragraph($"{name} - {Summary(root.Description, name)}")
            .Section("synopsis").Example([$"{name} [options]{(root.Subcommands.Any(c => !c.Hidden) ? " command [arguments]" : "")}"])
            .Section("description").Paragraph(root.Description ?? name);
        Options(page.Section("options"), root);
        if (root.Subcommands.Any(c => !c.Hidden))
        {
            page.Section("commands");
            foreach (var command in root.Subcommands.Where(c => !c.Hidden)) Command(page, command, name);
        }
        page.Section("exit status");
        foreach (var (code, meaning) in exitCodes) page.Tagged(Roff.Bold(code), meaning);
        if (files is not null) page.Section("files").Paragraph(files);
        return page.Section("see also").Paragraph("merlin(8), meradm(1), merlin-agent(8), merlin-k8s(8); the operations guide, docs/operations.md in Merlin's source.").ToString();
    }

    private static void Command(Roff page, Command command, string path)
    {
        var full = $"{path} {command.Name}";
        var arguments = string.Concat(command.Arguments.Where(a => !a.Hidden).Select(a => $" <{a.Name}>"));
        var aliases = command.Aliases.Count > 0 ? $" (also: {string.Join(", ", command.Aliases)})" : "";
        page.Subsection(full + arguments);
        if (command.Description is { Length: > 0 } description) page.Paragraph(description + aliases);
        foreach (var argument in command.Arguments.Where(a => !a.Hidden && a.Description is { Length: > 0 }))
            page.Tagged(Roff.Italic($"<{argument.Name}>"), argument.Description!);
        Options(page, command);
        foreach (var sub in command.Subcommands.Where(c => !c.Hidden)) Command(page, sub, full);
    }

    /// <summary>The command's own options; recursive ones (meradm's connection options) appear once, on the command that declares them.</summary>
    private static void Options(Roff page, Command command)
    {
        foreach (var option in command.Options.Where(o => !o.Hidden))
        {
            var names = new[] { option.Name }.Concat(option.Aliases).OrderBy(n => n.StartsWith("--", StringComparison.Ordinal) ? 1 : 0).Select(Roff.Bold);
            var value = option.Arity.MaximumNumberOfValues > 0 && option.ValueType != typeof(bool) ? " " + Roff.Italic(option.HelpName ?? "value") : "";
            page.Tagged(string.Join(", ", names) + value, option.Description ?? "");
        }
    }

    /// <summary>The NAME line's text: the description without its "program: " prefix.</summary>
    public static string Summary(string? description, string name) =>
        description is null ? name : description.StartsWith(name + ": ", StringComparison.Ordinal) ? description[(name.Length + 2)..] : description;
}
