using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using Grpc.Core;

namespace Merlin.Cli.Tests;

public class ErrorTests
{
    private const string SchedulerError =
        "config.scheduler: \"foo\" is not an IPVS scheduler (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh)";

    [Fact]
    public async Task InvalidArgument_PrintsTheServersDetailOnStderr_Exit1()
    {
        var run = await Meradm.RunAsync(c => c.Error = new RpcException(new Status(StatusCode.InvalidArgument, SchedulerError)),
            "service", "add", "web", "tcp", "10.0.0.1:80", "-s", "foo");

        Assert.Equal(1, run.ExitCode);
        Assert.Equal($"meradm: add service web: {SchedulerError}\n", run.Err);
        Assert.Equal("", run.Out);
        Assert.Equal("CreateService", Assert.Single(run.Client.Calls).Method);
    }

    [Theory]
    [InlineData(StatusCode.NotFound, "service web does not exist", "meradm: delete server 10.0.1.1:80 of service web: service web does not exist\n")]
    [InlineData(StatusCode.AlreadyExists, "", "meradm: delete server 10.0.1.1:80 of service web: already exists\n")]
    [InlineData(StatusCode.PermissionDenied, "", "meradm: delete server 10.0.1.1:80 of service web: permission denied\n")]
    [InlineData(StatusCode.Unavailable, "store unavailable: etcd timed out", "meradm: delete server 10.0.1.1:80 of service web: store unavailable: etcd timed out\n")]
    public async Task ServerStatus_IsPrintedWithWhatFailed(StatusCode code, string detail, string expected)
    {
        var run = await Meradm.RunAsync(c => c.Error = new RpcException(new Status(code, detail)), "server", "del", "web", "10.0.1.1:80");

        Assert.Equal(1, run.ExitCode);
        Assert.Equal(expected, run.Err);
    }

    [Fact]
    public async Task TransportFailure_NamesTheAddressThatCouldNotBeReached()
    {
        var refused = new HttpRequestException("Connection refused (lb1:4300)", new SocketException((int)SocketError.ConnectionRefused));
        var run = await Meradm.RunAsync(c => c.Error = new RpcException(new Status(StatusCode.Unavailable, "Error connecting to subchannel.", refused)),
            "-H", "lb1:4300", "list");

        Assert.Equal(1, run.ExitCode);
        Assert.Equal("meradm: list services: cannot reach merlin at lb1:4300: connection refused\n", run.Err);
    }

    [Fact]
    public async Task DeadlineExceeded_SaysHowLongItWaited()
    {
        var run = await Meradm.RunAsync(c => c.Error = new RpcException(new Status(StatusCode.DeadlineExceeded, "Deadline Exceeded")),
            "--timeout", "1500ms", "status");

        Assert.Equal(1, run.ExitCode);
        Assert.Equal("meradm: status: no answer from merlin at 127.0.0.1:4282 within 1.5s\n", run.Err);
    }

    [Fact]
    public async Task NotAGrpcServer_SaysSo()
    {
        var run = await Meradm.RunAsync(c => c.Error = new RpcException(new Status(StatusCode.Unimplemented, "Bad gRPC response. HTTP status code: 404")),
            "list");

        Assert.Equal("meradm: list services: 127.0.0.1:4282 did not answer as merlin's gRPC API: Bad gRPC response. HTTP status code: 404\n", run.Err);
    }

    [Fact]
    public async Task Unimplemented_HintsAtAnOlderDaemon()
    {
        var run = await Meradm.RunAsync(c => c.Error = new RpcException(new Status(StatusCode.Unimplemented, "Method is unimplemented.")), "status");

        Assert.Equal(1, run.ExitCode);
        Assert.Contains("does not offer this call", run.Err);
    }

    [Fact]
    public async Task RealChannel_NothingListening_ReportsTheUnreachableAddress()
    {
        // A loopback port that was free a moment ago: the connection is refused at once.
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var stdout = new StringWriter();
        var stderr = new StringWriter();

        var exit = await MeradmApp.RunAsync(["-H", "127.0.0.1", "-P", port.ToString(), "--timeout", "5s", "list"], stdout, stderr,
            ct: TestContext.Current.CancellationToken);

        Assert.Equal(1, exit);
        Assert.StartsWith($"meradm: list services: cannot reach merlin at 127.0.0.1:{port}: ", stderr.ToString());
        Assert.Equal("", stdout.ToString());
    }

    [Fact]
    public async Task UsageError_WritesNothingToStdoutAndPointsAtHelp()
    {
        var run = await Meradm.RunAsync("server", "add", "web", "10.0.1.1", "-w", "1", "-f", "route");

        Assert.Equal(2, run.ExitCode);
        Assert.Equal("", run.Out);
        Assert.Equal(
            "meradm: <ip:port>: \"10.0.1.1\" is not ip:port (IPv6 is written [addr]:port)\n" +
            "Run 'meradm server add --help' for usage.\n",
            run.Err);
    }

    [Theory]
    [InlineData("Required command was not provided")]
    [InlineData("Required command was not provided", "service")]
    [InlineData("'frobnicate'", "frobnicate")]
    public async Task MissingOrUnknownCommand_IsUsageError(string expected, params string[] args)
    {
        var run = await Meradm.RunAsync(args);

        run.AssertUsageError(expected);
    }

    [Fact]
    public async Task Help_GoesToStdout_Exit0()
    {
        var run = await Meradm.RunAsync("server", "edit", "--help");

        Assert.Equal(0, run.ExitCode);
        Assert.Contains(" server edit <serviceID> <ip:port> [options]", run.Out);
        Assert.Contains("--health-endpoint", run.Out);
        Assert.Empty(run.Client.Calls);
    }
}
