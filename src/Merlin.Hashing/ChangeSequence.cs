namespace Merlin.Hashing;

/// <summary>
/// A seeded sequence of random changes to a weighted server set: add, remove, drain (weight 0),
/// undrain and reweight. The same seed gives the same changes on every machine. The set stays
/// between <paramref name="minServers"/> and <paramref name="maxServers"/> and always keeps one
/// server with weight.
/// </summary>
public sealed class ChangeSequence(ulong seed, IReadOnlyList<uint> weightChoices, int minServers, int maxServers)
{
    public static readonly IReadOnlyList<string> Kinds = ["add", "remove", "drain", "undrain", "reweight"];

    private SyntheticFlows.SplitMix64 _rng = new(seed);
    private int _nextId;
    private readonly uint[] _weights = weightChoices.Count > 0 && weightChoices.All(w => w > 0)
        ? [.. weightChoices.Distinct()]
        : throw new ArgumentException("weights to choose from must be given and positive", nameof(weightChoices));

    /// <summary>The set as it is now (ids <see cref="SimulationServer.SyntheticId"/> 0, 1, 2, … in the order they were added).</summary>
    public List<(string Id, uint Weight)> Servers { get; } = [];

    /// <summary>What the last <see cref="Step"/> did (one of <see cref="Kinds"/>) and to whom.</summary>
    public string Kind { get; private set; } = "";

    public string ChangedId { get; private set; } = "";

    /// <summary>Starts with <paramref name="count"/> servers, weights cycled from <paramref name="weights"/> (default: random choices).</summary>
    public ChangeSequence Start(int count, IReadOnlyList<uint>? weights = null)
    {
        for (int i = 0; i < count; i++) Servers.Add((NewId(), weights is { Count: > 0 } ? weights[i % weights.Count] : Weight()));
        if (Servers.Count > 0 && Servers.All(s => s.Weight == 0)) Servers[0] = (Servers[0].Id, Weight());
        return this;
    }

    private string NewId() => SimulationServer.SyntheticId(_nextId++);

    private uint Weight() => _weights[(int)(_rng.Next() % (ulong)_weights.Length)];

    private int Pick() => (int)(_rng.Next() % (ulong)Servers.Count);

    /// <summary>One random change to <see cref="Servers"/>.</summary>
    public void Step()
    {
        if (Servers.Count == 0) throw new InvalidOperationException("start with at least one server");
        int active = Servers.Count(s => s.Weight > 0);
        // Every branch can run from any set the bounds allow, so the loop ends; the cap only guards a bug.
        for (int attempt = 0; attempt < 1_000_000; attempt++)
        {
            switch (_rng.Next() % 5)
            {
                case 0 when Servers.Count < maxServers:
                    var id = NewId();
                    Servers.Add((id, Weight()));
                    (Kind, ChangedId) = ("add", id);
                    return;
                case 1 when Servers.Count > minServers:
                    int r = Pick();
                    if (Servers[r].Weight > 0 && active == 1) continue;
                    (Kind, ChangedId) = ("remove", Servers[r].Id);
                    Servers.RemoveAt(r);
                    return;
                case 2 when active > 1:
                    int d = Pick();
                    if (Servers[d].Weight == 0) continue;
                    (Kind, ChangedId) = ("drain", Servers[d].Id);
                    Servers[d] = (Servers[d].Id, 0);
                    return;
                case 3 when active < Servers.Count:
                    int u = Pick();
                    if (Servers[u].Weight > 0) continue;
                    (Kind, ChangedId) = ("undrain", Servers[u].Id);
                    Servers[u] = (Servers[u].Id, Weight());
                    return;
                case 4 when _weights.Length > 1:
                    int w = Pick();
                    var weight = Weight();
                    if (Servers[w].Weight == 0 || weight == Servers[w].Weight) continue;
                    (Kind, ChangedId) = ("reweight", Servers[w].Id);
                    Servers[w] = (Servers[w].Id, weight);
                    return;
            }
        }
        throw new InvalidOperationException("no change is possible within the bounds");
    }
}
