using Google.Protobuf;
using Merlin.Store.Protobuf;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Store.Tests;

/// <summary>Merlin's mark on its writes (merlin_digest): the exact bytes, and what it tells apart.</summary>
public class RecordDigestTests
{
    private static byte[] Hex(string text) => Convert.FromHexString(text.Replace(" ", ""));

    // The Go merlin's `meradm service add web tcp 198.18.0.10:80 -s sh -b flag-1,flag-2`, as it stores it.
    private static readonly byte[] GoWeb = Hex("0a 03 776562 12 11 0a 0b 3139382e31382e302e3130 10 50 18 01 1a 14 0a 02 7368 12 06 666c61672d31 12 06 666c61672d32");

    [Theory]
    [InlineData("", 0xcbf29ce484222325)]
    [InlineData("a", 0xaf63dc4c8601ec8c)]
    [InlineData("foobar", 0x85944171f73967e8)]
    public void Fnv1a64_IsTheStandardOne(string text, ulong expected) =>
        Assert.Equal(expected, RecordDigest.Fnv1a64(System.Text.Encoding.ASCII.GetBytes(text)));

    [Fact]
    public void AStampedRecord_IsTheGoRecord_ThenField15_TheFnvOfThoseBytes_LittleEndian()
    {
        var stamped = RecordDigest.Stamped(Wire.VirtualService.Parser.ParseFrom(GoWeb));

        Assert.Equal(0xbb3f2f5999712ec7, stamped.MerlinDigest);
        Assert.Equal([.. GoWeb, .. Hex("79 c72e7199592f3fbb")], stamped.ToByteArray());
        Assert.True(RecordDigest.WrittenByMerlin(stamped));
    }

    [Fact]
    public void ARecordWithoutTheMark_OrWhoseContentChangedUnderIt_IsNotMerlins()
    {
        var go = Wire.VirtualService.Parser.ParseFrom(GoWeb);
        Assert.False(RecordDigest.WrittenByMerlin(go));

        // A Go merlin's edit keeps the mark (an unknown field to it) and changes the content.
        var edited = RecordDigest.Stamped(go);
        edited.Config.Scheduler = "mh";
        Assert.False(RecordDigest.WrittenByMerlin(edited));
    }

    [Fact]
    public void TheDigest_IsOfTheContent_NotOfTheOrderTheFieldsWereWrittenIn()
    {
        // A Go merlin writes the fields it does not know (here drain_deadline, 5) after the mark it keeps (15).
        var server = new Wire.RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 }, Config = new() { Weight = 1, Forward = Wire.ForwardMethod.Route },
            HealthCheck = new(), DrainDeadline = new Google.Protobuf.WellKnownTypes.Timestamp { Seconds = 1_800_000_000 },
        };
        var stamped = RecordDigest.Stamped(server);
        var deadline = new Wire.RealServer { DrainDeadline = stamped.DrainDeadline }.ToByteArray();
        var rest = stamped.Clone();
        rest.DrainDeadline = null;
        var reordered = Wire.RealServer.Parser.ParseFrom([.. rest.ToByteArray(), .. deadline]);

        Assert.Equal(stamped, reordered);
        Assert.True(RecordDigest.WrittenByMerlin(reordered));
    }

    [Fact]
    public void SameContent_IgnoresTheMarkOnly()
    {
        var go = Wire.VirtualService.Parser.ParseFrom(GoWeb);
        Assert.True(RecordDigest.SameContent(go, RecordDigest.Stamped(go)));
        var other = go.Clone();
        other.Config.Flags.RemoveAt(1);
        Assert.False(RecordDigest.SameContent(other, RecordDigest.Stamped(go)));
    }
}
