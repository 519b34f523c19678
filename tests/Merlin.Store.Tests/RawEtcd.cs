using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Net.Client;

namespace Merlin.Store.Tests;

/// <summary>A plain etcd client, as the original merlin or etcdctl would use it: raw keys and bytes.</summary>
internal sealed class RawEtcd : IDisposable
{
    private readonly GrpcChannel _channel;

    public RawEtcd(string endpoint)
    {
        _channel = GrpcChannel.ForAddress(endpoint);
        Client = new EtcdClient(_channel.CreateCallInvoker());
    }

    public EtcdClient Client { get; }

    public async Task<long> PutAsync(string key, byte[] value)
    {
        var resp = await Client.PutAsync(new PutRequest { Key = ByteString.CopyFromUtf8(key), Value = ByteString.CopyFrom(value) });
        return resp.Header.Revision;
    }

    public async Task<byte[]?> GetAsync(string key)
    {
        var resp = await Client.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(key) });
        return resp.Kvs.Count == 0 ? null : resp.Kvs[0].Value.ToByteArray();
    }

    public async Task<List<string>> KeysAsync(string prefix)
    {
        var key = ByteString.CopyFromUtf8(prefix);
        var resp = await Client.GetAsync(new RangeRequest { Key = key, RangeEnd = ByteString.CopyFromUtf8(EtcdClient.GetRangeEnd(prefix)), KeysOnly = true });
        return resp.Kvs.Select(kv => kv.Key.ToStringUtf8()).ToList();
    }

    public Task DeletePrefixAsync(string prefix) => Client.DeleteRangeAsync(prefix);

    public void Dispose()
    {
        Client.Dispose();
        _channel.Dispose();
    }
}
