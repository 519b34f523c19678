using Merlin.Dataplane.Nftables.Layout;
using Merlin.Hashing;
using Merlin.Model;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>A map's slots kept as owner indices in chunks: the same elements, hash and diff as one value per slot.</summary>
public class SlotContentTests
{
    [Theory]
    [InlineData(1, 251)]
    [InlineData(2, 16384)]    // exactly one chunk
    [InlineData(3, 16385)]    // one slot into the second
    [InlineData(4, 131071)]   // Merlin's M for 1,000 servers
    public void OwnerIndices_GiveTheElementsOfOneValuePerSlot(int seed, int size)
    {
        var random = new Random(seed);
        var values = Enumerable.Range(0, random.Next(1, 40)).Select(i => i % 7 == 3 ? null : $"02:00:00:00:00:{i:x2}").ToArray();
        var owners = Enumerable.Range(0, size).Select(_ => random.Next(-1, values.Length)).ToArray();
        var perSlot = owners.Select(o => o < 0 ? null : values[o]).ToArray();

        var content = new SlotContent(owners, values);
        var plain = new SlotContent(perSlot);

        Assert.Equal(size, content.Length);
        Assert.Equal(perSlot.Count(v => v is not null), content.Count);
        for (int s = 0; s < size; s++) Assert.Equal(perSlot[s], content.ValueAt(s));
        Assert.Equal(plain.Elements(), content.Elements());
        Assert.Equal(plain.Hash, content.Hash);
        Assert.Equal(string.Concat(perSlot.Select((v, s) => v is null ? "" : $"{s} : {v}\n")), string.Concat(content.Elements().Select(e => e.Element + "\n")));
        var (delete, add) = SetContent.Diff(plain, content);
        Assert.Empty(delete);
        Assert.Empty(add);
    }

    [Fact]
    public void AMapOfAThousandServers_IsTheirMaglevTable_SlotForSlot()
    {
        var backends = Enumerable.Range(0, 1000)
            .Select(i => new LayoutBuilder.Backend($"198.18.{i / 250}.{i % 250 + 1}", (uint)(1 + i * 37 % 100), $"02:00:00:00:{i / 256:x2}:{i % 256:x2}", null))
            .ToList();
        int size = MaglevTable.ChooseSize(backends.Count);
        var plan = new LayoutBuilder.ServicePlan(ServiceKey.ForAddress(System.Net.IPAddress.Parse("198.18.255.1"), 80, Protocol.Tcp), true, size,
            $"dsr M={size}", "test", "4p", backends);

        var map = (SlotContent)TableRenderer.Slots(plan);
        // Twice: the second build's pooled buffer held the first's table.
        var again = (SlotContent)TableRenderer.Slots(plan);

        var table = MaglevTable.Build(backends.Select(b => (b.Id, b.Weight)).ToList(), size);
        Assert.Equal(131071, size);
        for (int s = 0; s < size; s++) Assert.Equal(backends[table[s]].Value, map.ValueAt(s));
        Assert.Equal(map.Hash, again.Hash);
    }
}
