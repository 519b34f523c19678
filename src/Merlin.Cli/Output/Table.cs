namespace Merlin.Cli.Output;

/// <summary>Left-aligned columns separated by two spaces, widths taken from the widest cell.</summary>
public sealed class Table(params string[] headers)
{
    private readonly List<string[]> _rows = [headers];

    public int Columns => headers.Length;

    public void Add(params string[] cells)
    {
        if (cells.Length != headers.Length) throw new ArgumentException($"expected {headers.Length} cells, got {cells.Length}", nameof(cells));
        _rows.Add(cells);
    }

    public IReadOnlyList<string[]> Rows => _rows;

    public int[] Widths()
    {
        var widths = new int[headers.Length];
        foreach (var row in _rows)
            for (var i = 0; i < row.Length; i++) widths[i] = Math.Max(widths[i], row[i].Length);
        return widths;
    }

    /// <summary>One formatted line for row <paramref name="index"/> (0 = the header).</summary>
    public string Line(int index, int[] widths, string prefix = "")
    {
        var row = _rows[index];
        var cells = row.Select((cell, i) => i == row.Length - 1 ? cell : cell.PadRight(widths[i]));
        return (prefix + string.Join("  ", cells)).TrimEnd();
    }

    public void WriteTo(TextWriter writer)
    {
        var widths = Widths();
        for (var i = 0; i < _rows.Count; i++) writer.WriteLine(Line(i, widths));
    }
}
