using CsCheck;
using Merlin.Hashing;

namespace Merlin.Hashing.Tests;

public class KernelShTests
{
    private static IpvsDest D(string endpoint, int weight) => IpvsDest.Create(endpoint, weight);

    [Fact]
    public void Linux4x_IgnoresEverythingAboveTheLowByteOfTheKey() =>
        Gen.Select(Gen.UInt, Gen.UShort, Gen.UInt[1, 0xFFFFFF]).Sample((address, port, high) =>
        {
            // Two keys that differ only above bit 7 (here in the address) share a bucket...
            uint other = address + (high << 8);
            Assert.Equal(KernelSh.HashKey(ShVariant.Linux4x, address, port, 0), KernelSh.HashKey(ShVariant.Linux4x, other, port, 0));
            // ...because the low byte of a product is the low byte of (low byte · low byte).
            uint key = address + port;
            Assert.Equal((int)(((key & 0xFF) * 0xB1u) & 0xFF), KernelSh.HashKey(ShVariant.Linux4x, address, port, 0));
        }, iter: 2000);

    [Fact]
    public void Hash32_UsesTheHighBits()
    {
        // 256 clients 10.0.0.1, 10.0.1.1, … 10.0.255.1 on one port: one bucket with the 4.x hash,
        // spread over most of the table with hash_32.
        var keys = Enumerable.Range(0, 256).Select(i => 0x0A000001u + ((uint)i << 8)).ToArray();
        Assert.Single(keys.Select(k => KernelSh.HashKey(ShVariant.Linux4x, k, 40000, 0)).Distinct());
        Assert.True(keys.Select(k => KernelSh.HashKey(ShVariant.Hash32, k, 40000, 0)).Distinct().Count() > 128);
        // hash_32 is the top 8 bits of key · 0x61C88647.
        uint key = 0x0A000001u + 40000;
        Assert.Equal((int)((key * 0x61C88647u) >> 24), KernelSh.HashKey(ShVariant.Hash32, 0x0A000001u, 40000, 0));
    }

    [Fact]
    public void KeysDifferingOnlyAboveTheLowByte_SameBucketIn4x_DifferentInFixed()
    {
        var a = FlowKey.Parse("203.0.113.9:40000");
        var b = FlowKey.Parse("198.51.100.9:40000");   // same low address byte, same port
        Assert.Equal(KernelSh.HashKey(ShVariant.Linux4x, a.KernelFold, a.Port, 0), KernelSh.HashKey(ShVariant.Linux4x, b.KernelFold, b.Port, 0));
        Assert.NotEqual(KernelSh.HashKey(ShVariant.Hash32, a.KernelFold, a.Port, 0), KernelSh.HashKey(ShVariant.Hash32, b.KernelFold, b.Port, 0));
    }

    [Fact]
    public void Table_IsTiledNewestFirst_WeightBucketsEach()
    {
        // Added a, b, c: the kernel's list is c, b, a.
        var sh = KernelSh.Build([D("10.0.0.1:80", 2), D("10.0.0.2:80", 1), D("10.0.0.3:80", 1)], ShVariant.Linux4x);
        Assert.Equal(256, sh.TableSize);
        Assert.Equal(new[] { 2, 1, 0, 0, 2, 1, 0, 0 }, sh.Buckets[..8].ToArray());
        Assert.Equal(64, sh.Buckets.ToArray().Count(b => b == 2));
        Assert.Equal(128, sh.Buckets.ToArray().Count(b => b == 0));
    }

    [Fact]
    public void ZeroWeightDestination_StillTakesOneBucket_ButIsNeverChosenWithoutFallback()
    {
        var dests = new[] { D("10.0.0.1:80", 1), D("10.0.0.2:80", 0), D("10.0.0.3:80", 1) };
        var sh = KernelSh.Build(dests, ShVariant.Hash32);
        Assert.Equal(new[] { 2, 1, 0, 2, 1, 0 }, sh.Buckets[..6].ToArray());
        var flows = SyntheticFlows.Generate(5000, 3);
        var noFallback = flows.Select(f => sh.Schedule(f, true, false)).ToArray();
        Assert.DoesNotContain(1, noFallback);
        Assert.Contains(-1, noFallback);                 // dropped: "no destination available"
        var withFallback = flows.Select(f => sh.Schedule(f, true, true)).ToArray();
        Assert.DoesNotContain(1, withFallback);
        Assert.DoesNotContain(-1, withFallback);
    }

    [Fact]
    public void Fallback_WalksFromTheOriginalBucket()
    {
        var dests = new[] { D("10.0.0.1:80", 1), D("10.0.0.2:80", 1) };   // list: .2, .1 alternating
        var sh = KernelSh.Build(dests, ShVariant.Hash32);
        var flow = Enumerable.Range(0, 1000).Select(i => FlowKey.V4(0x0A630000u + (uint)i, 1234))
            .First(f => sh.Schedule(f, true, false) == 0);
        var drained = KernelSh.Build([dests[0].WithWeight(0), dests[1]], ShVariant.Hash32);
        int ihash = KernelSh.HashKey(ShVariant.Hash32, flow.KernelFold, flow.Port, 0);
        // Offsets ihash, ihash+1, …: the first bucket whose destination is available.
        int expected = -1;
        for (int offset = 0; offset < 256 && expected < 0; offset++)
        {
            int bucket = KernelSh.HashKey(ShVariant.Hash32, flow.KernelFold, flow.Port, (uint)((offset + ihash) % 256));
            if (drained.Buckets[bucket] == 1) expected = 1;
        }
        Assert.Equal(expected, drained.Schedule(flow, true, true));
        Assert.Equal(-1, drained.Schedule(flow, true, false));
    }

    [Fact]
    public void WithoutShPort_ThePortIsNotHashed()
    {
        var sh = KernelSh.Build([D("10.0.0.1:80", 1), D("10.0.0.2:80", 1), D("10.0.0.3:80", 1)], ShVariant.Hash32);
        var flows = Enumerable.Range(1024, 500).Select(p => FlowKey.V4(0xCB007109, (ushort)p)).ToArray();
        Assert.Single(flows.Select(f => sh.Schedule(f, false, false)).Distinct());
        Assert.Equal(3, flows.Select(f => sh.Schedule(f, true, false)).Distinct().Count());
    }

    [Fact]
    public void EmptyService_SchedulesNothing() =>
        Assert.Equal(-1, KernelSh.Build([], ShVariant.Linux4x).Schedule(FlowKey.Parse("10.0.0.1:1"), true, true));

    [Fact]
    public void SameLowByteClients_AllLandOnOneServerWith4x()
    {
        var report = HashSimulation.Run(SimulationServer.Synthetic(4), SyntheticFlows.Generate(4096, 1, FlowPattern.SameLowByte));
        var sh4 = report.Algorithms.Single(a => a.Algorithm == HashAlgorithm.ShLinux4x);
        Assert.Equal(1.0, sh4.Servers.Max(s => s.Share));
        var fixedSh = report.Algorithms.Single(a => a.Algorithm == HashAlgorithm.ShHash32);
        Assert.True(fixedSh.MaxOverExpected < 1.5, $"sh-fixed max/expected {fixedSh.MaxOverExpected}");
    }
}
