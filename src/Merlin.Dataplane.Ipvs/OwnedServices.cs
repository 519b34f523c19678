using System.Globalization;
using System.Net;
using Merlin.Model;

namespace Merlin.Dataplane.Ipvs;

/// <summary>
/// The set of kernel services this dataplane owns beyond the desired ones: those it created or adopted,
/// remembered in a small file (one key per line, written to a temporary file and renamed) so that a
/// restart still knows them. A missing or unreadable file means "nothing remembered", never a failure:
/// the cost is an orphaned service left in the kernel, which is the safe side.
/// </summary>
internal sealed class OwnedServices
{
    private readonly string? _path;
    private readonly HashSet<ServiceKey> _keys = new();
    private bool _dirty;

    public OwnedServices(string? path, Action<string>? warn = null)
    {
        _path = path;
        if (path is null || !File.Exists(path)) return;
        try
        {
            foreach (var line in File.ReadLines(path))
            {
                if (line.Length == 0 || line[0] == '#') continue;
                if (TryParse(line, out var key)) _keys.Add(key);
                else warn?.Invoke($"{path}: ignoring unreadable line \"{line}\"");
            }
        }
        catch (IOException e)
        {
            warn?.Invoke($"{path}: {e.Message}; owned services not remembered");
        }
    }

    public int Count => _keys.Count;

    public bool Contains(ServiceKey key) => _keys.Contains(key);

    public void Add(ServiceKey key) => _dirty |= _keys.Add(key);

    public void Remove(ServiceKey key) => _dirty |= _keys.Remove(key);

    public IReadOnlyCollection<ServiceKey> Keys => _keys;

    /// <summary>Writes the set if it changed; returns an error message instead of throwing.</summary>
    public string? Save()
    {
        if (!_dirty || _path is null) return null;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(_path))!);
            var temporary = _path + ".tmp";
            using (var writer = new StreamWriter(temporary))
            {
                writer.WriteLine("# IPVS services created by merlin; it deletes only these (and those in its store). One per line.");
                foreach (var key in _keys.OrderBy(k => k.ToString(), StringComparer.Ordinal)) writer.WriteLine(Format(key));
                writer.Flush();
                ((FileStream)writer.BaseStream).Flush(flushToDisk: true);
            }
            File.Move(temporary, _path, overwrite: true);
            _dirty = false;
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"{_path}: {e.Message}";
        }
    }

    /// <summary>"tcp 198.18.0.10 80" or "fwmark ipv4 7".</summary>
    internal static string Format(ServiceKey key) => key.IsFirewallMark
        ? $"fwmark {(key.Family == IpFamily.V6 ? "ipv6" : "ipv4")} {key.FirewallMark.ToString(CultureInfo.InvariantCulture)}"
        : $"{key.Protocol.ToString().ToLowerInvariant()} {key.Address} {key.Port.ToString(CultureInfo.InvariantCulture)}";

    internal static bool TryParse(string line, out ServiceKey key)
    {
        key = default;
        var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (f.Length != 3) return false;
        if (f[0] == "fwmark")
        {
            if (f[1] is not ("ipv4" or "ipv6") || !uint.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var mark) || mark == 0) return false;
            key = ServiceKey.ForFirewallMark(mark, f[1] == "ipv6" ? IpFamily.V6 : IpFamily.V4);
            return true;
        }
        if (!Enum.TryParse<Protocol>(f[0], ignoreCase: true, out var protocol) || !Enum.IsDefined(protocol)) return false;
        if (!IPAddress.TryParse(f[1], out var address) || !ushort.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var port)) return false;
        key = ServiceKey.ForAddress(address, port, protocol);
        return true;
    }
}
