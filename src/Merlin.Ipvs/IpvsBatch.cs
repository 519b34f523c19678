using Merlin.Model;
using Merlin.Linux;
using K = Merlin.Ipvs.IpvsKernel;

namespace Merlin.Ipvs;

/// <summary>
/// IPVS changes collected to be sent together by <see cref="IpvsClient.Execute"/>: each call encodes its
/// request at once into one buffer; execution packs them many to a datagram, so a whole reconcile pass
/// costs a few system calls instead of two per change. Requests run in the order added and a failure does
/// not stop the ones after it (a destination added to a service that failed to appear fails too, with
/// ESRCH). Create one with <see cref="IpvsClient.CreateBatch"/>; reusable after <see cref="Clear"/>.
/// </summary>
public sealed class IpvsBatch : IDisposable
{
    private readonly ushort _family;
    private readonly List<Entry> _entries = [];

    internal IpvsBatch(ushort family, int capacity)
    {
        _family = family;
        Buffer = new NetlinkBuffer(Math.Max(capacity, 1) * 96);
    }

    internal NetlinkBuffer Buffer { get; }

    public int Count => _entries.Count;

    public void NewService(ServiceKey key, ServiceConfig config) => Add(K.CmdNewService, key, null, config);

    public void SetService(ServiceKey key, ServiceConfig config) => Add(K.CmdSetService, key, null, config);

    public void DeleteService(ServiceKey key) => Add(K.CmdDelService, key, null, null);

    public void NewDestination(ServiceKey service, RealServerKey server, RealServerConfig config) => Add(K.CmdNewDest, service, server, config);

    public void SetDestination(ServiceKey service, RealServerKey server, RealServerConfig config) => Add(K.CmdSetDest, service, server, config);

    public void DeleteDestination(ServiceKey service, RealServerKey server) => Add(K.CmdDelDest, service, server, null);

    public void Clear()
    {
        Buffer.Clear();
        _entries.Clear();
    }

    /// <summary>What request <paramref name="index"/> was, for an error message: "IPVS NEW_DEST 10.0.0.2:80 in tcp:10.0.0.1:80".</summary>
    public string Describe(int index)
    {
        var e = _entries[index];
        return e.Server is { } server ? IpvsClient.Describe(e.Command, e.Service, server) : IpvsClient.Describe(e.Command, e.Service);
    }

    private void Add(byte command, ServiceKey service, RealServerKey? server, object? config)
    {
        var mark = Buffer.Length;
        try
        {
            switch (config)
            {
                case ServiceConfig sc: IpvsCodec.WriteService(Buffer, _family, command, service, sc); break;
                case RealServerConfig rc: IpvsCodec.WriteDestination(Buffer, _family, command, service, server!.Value, rc); break;
                default:
                    if (server is { } s) IpvsCodec.WriteDestination(Buffer, _family, command, service, s, null);
                    else IpvsCodec.WriteServiceKeyCommand(Buffer, _family, command, service);
                    break;
            }
        }
        catch
        {
            // A request rejected half-written (a weight out of range, say) must not leave its first bytes behind.
            Buffer.Truncate(mark);
            throw;
        }
        _entries.Add(new Entry(command, service, server));
    }

    public void Dispose() => Buffer.Dispose();

    private readonly record struct Entry(byte Command, ServiceKey Service, RealServerKey? Server);
}
