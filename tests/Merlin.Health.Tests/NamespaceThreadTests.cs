using System.Net;
using System.Net.Sockets;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Merlin.Linux;
using Merlin.Testing;

namespace Merlin.Health.Tests;

/// <summary>
/// Alone, so no other test's namespace work is under way while this one looks at every thread of the
/// process.
/// </summary>
[CollectionDefinition(nameof(AloneInTheProcess), DisableParallelization = true)]
public sealed class AloneInTheProcess;

/// <summary>
/// Work done in a network namespace leaves no thread of this process in it: checks of every kind and
/// netlink sockets made there, each entering it only around the native call that makes the socket.
/// </summary>
[Collection(nameof(AloneInTheProcess))]
public sealed class NamespaceThreadTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task ChecksOfEveryKind_AndNetlinkSockets_InANamespace_LeaveEveryThreadInTheProcesssOwn()
    {
        Requires.Root();
        using var ns = new ScratchNamespace("threads");
        using var inside = new ManagedCodeInside(ns);
        // The servers listen on the namespace's own loopback: only a connection made in there reaches them.
        var tcp = ListenInside(ns.Name, out var tcpPort);
        var http = ListenInside(ns.Name, out var httpPort);
        var https = ListenInside(ns.Name, out var httpsPort);
        var grpc = ListenInside(ns.Name, out var grpcPort);
        using var tcpListener = tcp;
        int closedPort;
        using (ListenInside(ns.Name, out closedPort)) { } // nothing listens there now: refused, in the namespace
        var health = new HealthServiceImpl();
        health.SetStatus("", HealthCheckResponse.Types.ServingStatus.Serving);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddGrpc();
        builder.Services.AddSingleton(health);
        builder.WebHost.ConfigureKestrel(k =>
        {
            // Kestrel takes the descriptors over (and closes them).
            k.ListenHandle(Release(http));
            k.ListenHandle(Release(https), l => l.UseHttps(ProbeTests.SelfSigned()));
            k.ListenHandle(Release(grpc), l => l.Protocols = HttpProtocols.Http2);
        });
        await using var app = builder.Build();
        app.MapGet("/ok", () => Results.Text("ok"));
        app.MapGrpcService<HealthServiceImpl>();
        await app.StartAsync(Ct);

        using var probes = new HealthProbes(ns.Name);
        await Work(probes, ns.Name, tcpPort, httpPort, httpsPort, grpcPort, closedPort, rounds: 1);
        // The runtime's tiering worker ends after about 4 s without work, and the next thread that needs one
        // starts it (a call reaching the tier-up count, a method called for the first time) — with that
        // thread's namespace. So give it time to end, then do the work again: a thread running managed code
        // in the namespace would now start it there.
        await Task.Delay(TimeSpan.FromSeconds(5), Ct);
        await Work(probes, ns.Name, tcpPort, httpPort, httpsPort, grpcPort, closedPort, rounds: 40);
        Assert.Empty(inside.Seen);
        Assert.Empty(ThreadNamespaces.Elsewhere());
    }

    private static async Task Work(HealthProbes probes, string ns, int tcpPort, int httpPort, int httpsPort, int grpcPort, int closedPort, int rounds)
    {
        for (var round = 0; round < rounds; round++)
        {
            Assert.Equal(new ProbeResult(true, "connected"), await Probe(probes, $"tcp://:{tcpPort}"));
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await Probe(probes, $"http://:{httpPort}/ok"));
            Assert.Equal(new ProbeResult(true, "HTTP 200"), await Probe(probes, $"https://:{httpsPort}/ok"));
            Assert.Equal(new ProbeResult(true, "gRPC Serving"), await Probe(probes, $"grpc://:{grpcPort}"));
            Assert.Equal(new ProbeResult(false, "ConnectionRefused"), await Probe(probes, $"tcp://:{closedPort}"));
            // Generic netlink needs no module: the controller answers in every namespace.
            using var client = NetlinkClient.Open(Merlin.Linux.Netlink.ProtocolGeneric, new NetlinkSocketOptions { NetworkNamespace = ns });
            Assert.Equal("nlctrl", GenericNetlinkFamily.Resolve(client, "nlctrl").Name);
        }
    }

    private static Task<ProbeResult> Probe(HealthProbes probes, string endpoint) =>
        probes.ProbeAsync(IPAddress.Loopback, new Uri(endpoint.Replace("://:", "://check.invalid:")), Timeout, Ct);

    /// <summary>A TCP listener on 127.0.0.1 of namespace <paramref name="ns"/>: made there, bound and listening from here.</summary>
    private static Socket ListenInside(string ns, out int port)
    {
        var socket = NetworkNamespace.CreateSocket(ns, AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        socket.Listen(64);
        port = ((IPEndPoint)socket.LocalEndPoint!).Port;
        return socket;
    }

    /// <summary>Hands the descriptor over: the socket object no longer closes it.</summary>
    private static ulong Release(Socket socket)
    {
        var fd = socket.SafeHandle.DangerousGetHandle();
        socket.SafeHandle.SetHandleAsInvalid();
        return (ulong)fd;
    }
}
