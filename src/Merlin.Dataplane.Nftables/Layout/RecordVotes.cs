
namespace Merlin.Dataplane.Nftables.Layout;

/// <summary>The previous ids a record's users had, with how many users had each.</summary>
internal sealed class RecordVotes
{
    public int Users;

    /// <summary>The id the record got.</summary>
    public uint Id;
    private uint _only;
    private int _onlyCount;
    private Dictionary<uint, int>? _several;

    public void Add(uint id, int count)
    {
        if (id == 0) return;
        if (_several is not null) { _several[id] = _several.GetValueOrDefault(id) + count; return; }
        if (_only == 0 || _only == id) { _only = id; _onlyCount += count; return; }
        _several = new Dictionary<uint, int> { [_only] = _onlyCount, [id] = count };
    }

    /// <summary>The ids, most users first, then the lowest.</summary>
    public IEnumerable<uint> Ranked() =>
        _several is not null ? _several.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key).Select(kv => kv.Key)
        : _only != 0 ? [_only] : [];
}
