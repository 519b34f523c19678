using System.Net;
using System.Text;
using Merlin.Hashing;

namespace Merlin.Hashing.Tests;

public class HashFunctionTests
{
    // Reference key 00 01 .. 0f, messages 00 01 .. (len-1): the SipHash paper's vectors
    // (also lib/test_siphash.c in the kernel).
    private const ulong K0 = 0x0706050403020100UL, K1 = 0x0f0e0d0c0b0a0908UL;

    private static byte[] Message(int length) => Enumerable.Range(0, length).Select(i => (byte)i).ToArray();

    [Theory]
    [InlineData(0, 0x726fdb47dd0e0e31UL)]
    [InlineData(1, 0x74f839c593dc67fdUL)]
    [InlineData(7, 0xab0200f58b01d137UL)]
    [InlineData(8, 0x93f5f5799a932462UL)]
    [InlineData(15, 0xa129ca6149be45e5UL)]   // the paper's worked example
    [InlineData(16, 0x3f2acc7f57c29bdbUL)]
    [InlineData(63, 0x958a324ceb064572UL)]
    public void SipHash24_MatchesReferenceVectors(int length, ulong expected) =>
        Assert.Equal(expected, SipHash.Hash24(K0, K1, Message(length)));

    // The kernel's 64-bit hsiphash vectors (SipHash-1-3, low 32 bits).
    [Theory]
    [InlineData(0, 0x050fc4dcU)]
    [InlineData(1, 0x7d57ca93U)]
    [InlineData(4, 0x88d38328U)]
    [InlineData(7, 0x9bb11140U)]
    [InlineData(8, 0x8d299a8eU)]
    [InlineData(15, 0x2a519956U)]
    [InlineData(63, 0xb7bbb3a8U)]
    public void KernelHsipHash_MatchesKernelSelfTestVectors(int length, uint expected) =>
        Assert.Equal(expected, SipHash.KernelHsipHash(K0, K1, Message(length)));

    [Fact]
    public void KernelHsipHash_OfAU32_IsTheHashOfItsLittleEndianBytes()
    {
        // hsiphash_1u32(0x03020100) equals hsiphash of bytes 00 01 02 03 (kernel self-test).
        Assert.Equal(0x88d38328U, SipHash.KernelHsipHash(K0, K1, 0x03020100U));
        Assert.Equal(SipHash.KernelHsipHash(7, 9, [0xef, 0xbe, 0xad, 0xde]), SipHash.KernelHsipHash(7, 9, 0xdeadbeefU));
    }

    // lookup3.c's own self-test values (jhash is lookup3's hashlittle on little-endian machines).
    [Theory]
    [InlineData("", 0u, 0xdeadbeefU)]
    [InlineData("", 0xdeadbeefU, 0xbd5b7ddeU)]
    [InlineData("Four score and seven years ago", 0u, 0x17770551U)]
    [InlineData("Four score and seven years ago", 1u, 0xcd628161U)]
    public void Jhash_MatchesLookup3Vectors(string text, uint initval, uint expected) =>
        Assert.Equal(expected, Jhash.Hash(Encoding.ASCII.GetBytes(text), initval));

    [Fact]
    public void ReciprocalScale_IsMultiplyShiftNotRemainder()
    {
        Assert.Equal(0u, Jhash.ReciprocalScale(0, 509));
        Assert.Equal(508u, Jhash.ReciprocalScale(uint.MaxValue, 509));
        Assert.Equal(254u, Jhash.ReciprocalScale(0x80000000u, 509));
        Assert.NotEqual(0x80000000u % 509, Jhash.ReciprocalScale(0x80000000u, 509));
    }

    [Fact]
    public void NftKey_PadsThePortToARegister()
    {
        Span<byte> key = stackalloc byte[20];
        var flow = FlowKey.Parse("203.0.113.9:40000");
        Assert.Equal(8, flow.WriteNftKey(key, includePort: true));
        Assert.Equal(new byte[] { 203, 0, 113, 9, 0x9c, 0x40, 0, 0 }, key[..8].ToArray());
        Assert.Equal(4, flow.WriteNftKey(key, includePort: false));

        var v6 = FlowKey.Parse("[2001:db8::7]:443");
        Assert.Equal(20, v6.WriteNftKey(key, includePort: true));
        Assert.Equal(IPAddress.Parse("2001:db8::7").GetAddressBytes(), key[..16].ToArray());
        Assert.Equal(new byte[] { 0x01, 0xbb, 0, 0 }, key[16..20].ToArray());
    }

    // Slots the kernel itself computed: nft rules `meta mark set jhash ip saddr . tcp sport mod 509
    // seed 0x1234` (and `jhash ip saddr …`) on this machine's kernel, for SYNs sent from those
    // sources inside a scratch network namespace, the marks read back through counters.
    [Theory]
    [InlineData("198.18.200.9:40000", 40, 289)]
    [InlineData("198.18.200.9:40001", 244, 289)]
    [InlineData("198.18.201.77:1234", 498, 44)]
    public void NftFlowHash_MatchesTheKernel(string flow, int withPort, int addressOnly)
    {
        var key = FlowKey.Parse(flow);
        Assert.Equal(withPort, NftFlowHash.Slot(key, 0x1234, 509, includePort: true));
        Assert.Equal(addressOnly, NftFlowHash.Slot(key, 0x1234, 509, includePort: false));
    }

    // Expected values from Reference/kernel_reference.py (an independent Python model).
    [Theory]
    [InlineData("203.0.113.9:40000", true, 0x40342bc4U, 127)]
    [InlineData("203.0.113.9:40000", false, 0x3a3150c4U, 115)]
    [InlineData("198.51.100.200:1234", true, 0x87425721U, 268)]
    [InlineData("198.51.100.200:1234", false, 0x633a4150U, 197)]
    public void NftFlowHash_MatchesReferenceModel(string flow, bool port, uint hash, int slot)
    {
        var key = FlowKey.Parse(flow);
        Assert.Equal(hash, NftFlowHash.Hash(key, 0x1234, port));
        Assert.Equal(slot, NftFlowHash.Slot(key, 0x1234, 509, port));
    }

    [Fact]
    public void KernelFold_XorsTheIpv6Words()
    {
        var v6 = FlowKey.Parse("[2001:db8:0:1::2]:80");
        Assert.Equal(0x20010db8u ^ 0x00000001u ^ 0x00000000u ^ 0x00000002u, v6.KernelFold);
        Assert.Equal(0xC6120015u, FlowKey.Parse("198.18.0.21:80").KernelFold);
    }

    [Theory]
    [InlineData("198.18.0.21:80")]
    [InlineData("[2001:db8::1]:443")]
    public void FlowKey_RoundTripsThroughText(string text) => Assert.Equal(text, FlowKey.Parse(text).ToString());

    [Theory]
    [InlineData("198.18.0.21", "address:port")]
    [InlineData("2001:db8::1:80", "[address]:port")]
    [InlineData("web:80", "not an IPv4 or IPv6 address")]
    [InlineData("198.18.0.21:70000", "not a port")]
    public void FlowKey_RejectsBadText(string text, string reason)
    {
        Assert.False(FlowKey.TryParse(text, out _, out var error));
        Assert.Contains(reason, error);
    }
}
