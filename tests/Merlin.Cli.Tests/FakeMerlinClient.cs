using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Merlin.Client;
using Merlin.Contracts;
using Wire = Merlin.Contracts;

namespace Merlin.Cli.Tests;

/// <summary>Records every request and answers with canned responses, or throws <see cref="Error"/>.</summary>
public sealed class FakeMerlinClient : Wire.Merlin.MerlinClient
{
    public List<(string Method, IMessage Request, CallOptions Options)> Calls { get; } = [];
    public ListResponse ListResponse { get; set; } = new();
    public StatusResponse StatusResponse { get; set; } = new();
    public CountersResponse CountersResponse { get; set; } = new();
    public RpcException? Error { get; set; }

    public IMessage Single(string method)
    {
        var call = Assert.Single(Calls);
        Assert.Equal(method, call.Method);
        return call.Request;
    }

    private AsyncUnaryCall<T> Answer<T>(string method, IMessage request, CallOptions options, T response)
    {
        Calls.Add((method, request, options));
        var task = Error is { } error ? Task.FromException<T>(error) : Task.FromResult(response);
        return new AsyncUnaryCall<T>(task, Task.FromResult(new Metadata()), () => Grpc.Core.Status.DefaultSuccess, () => [], () => { });
    }

    public override AsyncUnaryCall<Empty> CreateServiceAsync(VirtualService request, CallOptions options) => Answer("CreateService", request, options, new Empty());
    public override AsyncUnaryCall<Empty> UpdateServiceAsync(VirtualService request, CallOptions options) => Answer("UpdateService", request, options, new Empty());
    public override AsyncUnaryCall<Empty> DeleteServiceAsync(StringValue request, CallOptions options) => Answer("DeleteService", request, options, new Empty());
    public override AsyncUnaryCall<Empty> CreateServerAsync(RealServer request, CallOptions options) => Answer("CreateServer", request, options, new Empty());
    public override AsyncUnaryCall<Empty> UpdateServerAsync(RealServer request, CallOptions options) => Answer("UpdateServer", request, options, new Empty());
    public override AsyncUnaryCall<Empty> DeleteServerAsync(RealServer request, CallOptions options) => Answer("DeleteServer", request, options, new Empty());
    public override AsyncUnaryCall<Empty> DrainServerAsync(DrainRequest request, CallOptions options) => Answer("DrainServer", request, options, new Empty());
    public override AsyncUnaryCall<Empty> UndrainServerAsync(RealServer request, CallOptions options) => Answer("UndrainServer", request, options, new Empty());
    public override AsyncUnaryCall<ListResponse> ListAsync(Empty request, CallOptions options) => Answer("List", request, options, ListResponse);

    /// <summary>What ListStream sends; null: the daemon has no ListStream (the Go merlin, an older Merlin) and answers Unimplemented.</summary>
    public List<ListResponse>? ListParts { get; set; }

    public override AsyncServerStreamingCall<ListResponse> ListStream(Empty request, CallOptions options)
    {
        Calls.Add(("ListStream", request, options));
        return new AsyncServerStreamingCall<ListResponse>(new Parts(ListParts, Error), Task.FromResult(new Metadata()),
            () => Grpc.Core.Status.DefaultSuccess, () => [], () => { });
    }

    private sealed class Parts(List<ListResponse>? parts, RpcException? error) : IAsyncStreamReader<ListResponse>
    {
        private int _next = -1;

        public ListResponse Current => parts![_next];

        public Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (error is not null) return Task.FromException<bool>(error);
            if (parts is null) return Task.FromException<bool>(new RpcException(new Grpc.Core.Status(StatusCode.Unimplemented, "Method is unimplemented.")));
            return Task.FromResult(++_next < parts.Count);
        }
    }
    public override AsyncUnaryCall<StatusResponse> StatusAsync(Empty request, CallOptions options) => Answer("Status", request, options, StatusResponse);
    public override AsyncUnaryCall<CountersResponse> CountersAsync(Empty request, CallOptions options) => Answer("Counters", request, options, CountersResponse);
    public override AsyncUnaryCall<StatusResponse> DrainNodeAsync(Empty request, CallOptions options) => Answer("DrainNode", request, options, StatusResponse);
    public override AsyncUnaryCall<StatusResponse> UndrainNodeAsync(Empty request, CallOptions options) => Answer("UndrainNode", request, options, StatusResponse);
}

/// <summary>Runs meradm in-process against a <see cref="FakeMerlinClient"/>.</summary>
public sealed class Meradm
{
    public FakeMerlinClient Client { get; } = new();
    public List<ConnectionOptions> Connections { get; } = [];
    public int ExitCode { get; private set; }
    public string Out { get; private set; } = "";
    public string Err { get; private set; } = "";

    public static async Task<Meradm> RunAsync(params string[] args) => await new Meradm().InvokeAsync(args);

    public static async Task<Meradm> RunAsync(Action<FakeMerlinClient> setup, params string[] args)
    {
        var meradm = new Meradm();
        setup(meradm.Client);
        return await meradm.InvokeAsync(args);
    }

    private async Task<Meradm> InvokeAsync(string[] args)
    {
        var stdout = new StringWriter { NewLine = "\n" };
        var stderr = new StringWriter { NewLine = "\n" };
        ExitCode = await MeradmApp.RunAsync(args, stdout, stderr, options =>
        {
            Connections.Add(options);
            return Client;
        }, TestContext.Current.CancellationToken);
        Out = stdout.ToString();
        Err = stderr.ToString();
        return this;
    }

    /// <summary>A usage error: exit 2, nothing sent, and the message names what was wrong.</summary>
    public void AssertUsageError(string expected)
    {
        Assert.True(ExitCode == 2, $"exit {ExitCode}, stderr: {Err}");
        Assert.Empty(Client.Calls);
        Assert.StartsWith("meradm: ", Err);
        Assert.Contains(expected, Err);
    }

    public T Request<T>(string method) where T : IMessage
    {
        Assert.True(ExitCode == 0, $"exit {ExitCode}, stderr: {Err}");
        Assert.Equal("", Err);
        return Assert.IsType<T>(Client.Single(method));
    }
}
