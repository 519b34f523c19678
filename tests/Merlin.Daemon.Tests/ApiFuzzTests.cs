using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Daemon.Tests;

/// <summary>
/// A small seeded fuzz run against a real daemon on each store (the start of issue 20's fuzz suite): valid
/// messages with mutated bytes and random bodies, to every method. Whatever comes back is a status from our
/// contract (never UNKNOWN, never INTERNAL — no broken frames are sent here), nothing is logged at Error, the
/// log stays small, and everything stored is a record the daemon can program.
/// </summary>
public class ApiFuzzTests(EtcdFixture etcd) : BackendTestBase(etcd)
{
    /// <summary>Calls per store; MERLIN_FUZZ_CALLS=100000 for the long run (docs/performance.md).</summary>
    private static readonly int Calls = int.TryParse(Environment.GetEnvironmentVariable("MERLIN_FUZZ_CALLS"), out var n) && n > 0 ? n : 1500;

    /// <summary>The seed; MERLIN_FUZZ_SEED picks another corpus.</summary>
    private static readonly int Seed = int.TryParse(Environment.GetEnvironmentVariable("MERLIN_FUZZ_SEED"), out var s) ? s : 20;
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static readonly Marshaller<byte[]> Bytes = Marshallers.Create(b => b, b => b);

    private static readonly string[] Methods = Wire.Merlin.Descriptor.Methods.Select(m => m.Name).ToArray();

    /// <summary>Valid requests of every request type, to mutate.</summary>
    private static readonly IMessage[] Seeds =
    [
        new VirtualService { Id = "web", Key = new() { Ip = "198.18.0.10", Port = 80, Protocol = Protocol.Tcp }, Config = new() { Scheduler = "sh", Flags = { "sh-port" } } },
        new VirtualService { Id = "v6", Key = new() { Ip = "2001:db8::10", Port = 443, Protocol = Protocol.Udp }, Config = new() { Scheduler = "mh", PersistenceTimeout = 30 } },
        new RealServer
        {
            ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 },
            Config = new() { Weight = 5, Forward = ForwardMethod.Tunnel, TunnelType = TunnelType.Gue, TunnelPort = 6080, TunnelFlags = { "csum" } },
            HealthCheck = new() { Endpoint = "http://:8080/health", Period = new Duration { Seconds = 2 }, Timeout = new Duration { Seconds = 1 }, UpThreshold = 2, DownThreshold = 3 },
        },
        new DrainRequest { Server = new() { ServiceID = "web", Key = new() { Ip = "198.18.1.1", Port = 80 } }, Period = new Duration { Seconds = 300 } },
        new StringValue { Value = "web" },
        new Empty(),
    ];

    [Theory, MemberData(nameof(Backends))]
    public async Task SeededFuzz_AnswersOnlyContractStatuses_LogsNoError_AndStoresOnlyValidRecords(string backend)
    {
        await using var daemon = await StartDaemonAsync(backend);
        var random = new Random(Seed); // a failure names its call
        var invoker = daemon.Channel.CreateCallInvoker();
        var seen = new Dictionary<StatusCode, int>();
        var clock = System.Diagnostics.Stopwatch.StartNew();

        for (var i = 0; i < Calls; i++)
        {
            var method = Methods[random.Next(Methods.Length)];
            var body = random.Next(4) == 0 ? RandomBytes(random, random.Next(0, 64)) : Mutate(random, Seeds[random.Next(Seeds.Length)].ToByteArray());
            var call = new Method<byte[], byte[]>(MethodType.Unary, "types.Merlin", method, Bytes, Bytes);
            StatusCode code;
            try
            {
                await invoker.AsyncUnaryCall(call, null, new CallOptions(cancellationToken: Ct), body);
                code = StatusCode.OK;
            }
            catch (RpcException e)
            {
                code = e.StatusCode;
                Assert.True(code is not (StatusCode.Unknown or StatusCode.Internal),
                    $"call {i}: {method}({Convert.ToHexString(body)}) answered {code}: {e.Status.Detail}");
                Assert.True(e.Status.Detail.Length < 1024, $"call {i}: {method}: a {e.Status.Detail.Length}-character message");
            }
            seen[code] = seen.GetValueOrDefault(code) + 1;
        }

        Assert.DoesNotContain(daemon.Logs.Lines, l => l.Contains(" Error ") || l.Contains(" Critical "));
        // What callers cause is rate-limited: per kind (refused, malformed) one line per 10 s. (An admin's node drains
        // and undrains are real changes and logged each; they are not counted here.)
        var refusals = daemon.Logs.Lines.Count(l => l.Contains("Merlin.Api.Security.RefusedCalls"));
        var bound = 2 * ((int)Math.Ceiling(clock.Elapsed / Merlin.Api.RateLimitedLog.DefaultInterval) + 1);
        Assert.True(refusals <= bound, $"{refusals} refusal lines for {Calls} calls in {clock.Elapsed}:\n{daemon.Logs.Text}");
        Assert.True(seen.GetValueOrDefault(StatusCode.InvalidArgument) > Calls / 4, string.Join(", ", seen));
        var logBytes = daemon.Logs.Lines.Sum(l => System.Text.Encoding.UTF8.GetByteCount(l) + 1);
        Assert.True(logBytes < 1 << 20, $"{logBytes} bytes of log for {Calls} calls");
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"{backend}: {Calls} calls (seed {Seed}) in {clock.Elapsed.TotalSeconds:0.0} s: {string.Join(", ", seen.OrderBy(p => p.Key).Select(p => $"{p.Key} {p.Value}"))}; " +
            $"log {daemon.Logs.Lines.Count} lines, {logBytes} bytes, {refusals} from refused calls");

        var list = await daemon.Extended.ListAsync(new Empty(), cancellationToken: Ct);
        foreach (var item in list.Items)
        {
            Assert.Null(WireMapper.TryToModel(item.Service, out _));
            foreach (var server in item.Servers) Assert.Null(WireMapper.TryToModel(server, out _));
        }
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>One to three of: a flipped bit, a byte set at random, a cut, random bytes inserted, a span repeated.</summary>
    private static byte[] Mutate(Random random, byte[] message)
    {
        var bytes = new List<byte>(message);
        for (var n = random.Next(1, 4); n > 0; n--)
        {
            var at = bytes.Count == 0 ? 0 : random.Next(bytes.Count);
            switch (random.Next(5))
            {
                case 0 when bytes.Count > 0: bytes[at] ^= (byte)(1 << random.Next(8)); break;
                case 1 when bytes.Count > 0: bytes[at] = (byte)random.Next(256); break;
                case 2: bytes.RemoveRange(at, bytes.Count - at); break;
                case 3: bytes.InsertRange(at, RandomBytes(random, random.Next(1, 8))); break;
                case 4 when bytes.Count > 0:
                    var length = random.Next(1, Math.Min(16, bytes.Count - at) + 1);
                    bytes.InsertRange(at, bytes.GetRange(at, length));
                    break;
            }
        }
        return [.. bytes];
    }
}
