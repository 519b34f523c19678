using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Merlin.Linux;

/// <summary>Settings of a <see cref="NetlinkSocket"/>.</summary>
public sealed record NetlinkSocketOptions
{
    /// <summary>How long one receive waits for the kernel (SO_RCVTIMEO). A kernel that never answers costs this, not a hang.</summary>
    public TimeSpan ReceiveTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long one send may block (SO_SNDTIMEO).</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Receive buffer requested (SO_RCVBUFFORCE when the process has CAP_NET_ADMIN, else SO_RCVBUF, which the
    /// kernel caps at net.core.rmem_max). Replies to a batch queue here until read; 0 keeps the default.
    /// </summary>
    public int ReceiveBufferSize { get; init; } = 4 << 20;

    /// <summary>Send buffer requested, likewise; a batch is sent in datagrams that must fit in it. 0 keeps the default.</summary>
    public int SendBufferSize { get; init; } = 1 << 20;

    /// <summary>Largest datagram a receive accepts; a dump's datagrams are at most 32 KiB on current kernels.</summary>
    public int MaxDatagramSize { get; init; } = 64 << 10;

    /// <summary>
    /// A named network namespace (<c>ip netns add</c>) to open the socket in; null is the caller's own. A
    /// socket talks to the namespace it was created in for its whole life.
    /// </summary>
    public string? NetworkNamespace { get; init; }
}

/// <summary>
/// Where netlink datagrams go and come from: the kernel through a <see cref="NetlinkSocket"/>, or a test's
/// scripted kernel. <see cref="NetlinkClient"/> does everything above the datagram.
/// </summary>
public interface INetlinkTransport : IDisposable
{
    /// <summary>Our port id; replies carry it.</summary>
    uint PortId { get; }

    NetlinkSocketOptions Options { get; }

    /// <summary>Sends one datagram to the kernel; false if the send timed out.</summary>
    bool TrySend(ReadOnlySpan<byte> datagram, string request);

    /// <summary>Receives one datagram from the kernel; -1 if none arrived within the receive timeout.</summary>
    int Receive(Span<byte> buffer, string request);

    /// <summary>Receives one datagram already queued, without waiting; -1 if none is.</summary>
    int ReceiveQueued(Span<byte> buffer, string request) => Receive(buffer, request);

    /// <summary>The largest datagram a send takes (the send buffer less what the kernel keeps of it).</summary>
    int SendLimit => int.MaxValue;
}

/// <summary>
/// A bound AF_NETLINK datagram socket talking to the kernel (port id 0). Blocking calls with timeouts:
/// the kernel handles a request synchronously inside send, so replies are normally queued before the
/// send returns. Not thread-safe; <see cref="NetlinkClient"/> serialises its use.
/// </summary>
public sealed unsafe class NetlinkSocket : INetlinkTransport
{
    private readonly SafeSocketHandle _fd;

    private NetlinkSocket(SafeSocketHandle fd, uint portId, NetlinkSocketOptions options)
    {
        _fd = fd;
        PortId = portId;
        Options = options;
    }

    /// <summary>The port id the kernel assigned at bind; replies carry it.</summary>
    public uint PortId { get; }

    public NetlinkSocketOptions Options { get; }

    /// <summary>Opens, configures and binds a socket of <paramref name="protocol"/> (e.g. <see cref="Netlink.ProtocolGeneric"/>).</summary>
    public static NetlinkSocket Open(int protocol, NetlinkSocketOptions? options = null)
    {
        options ??= new NetlinkSocketOptions();
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("netlink sockets exist only on Linux");
        if (!Environment.Is64BitProcess) throw new PlatformNotSupportedException("netlink socket timeouts are set as a 64-bit struct timeval");

        // Only the socket is made in the namespace: it talks to that one for its whole life, configured and bound from here.
        if (!Merlin.Linux.NetworkNamespace.TryCreateSocket(options.NetworkNamespace, Netlink.AddressFamily, Libc.SockRaw | Libc.SockCloexec, protocol, out var fd, out var errno))
            ThrowHelper.Errno(errno, $"socket(AF_NETLINK, SOCK_RAW, {protocol})");
        var raw = (int)fd.DangerousGetHandle();
        try
        {
            SetTimeout(raw, Libc.SoRcvtimeo, options.ReceiveTimeout, "SO_RCVTIMEO");
            SetTimeout(raw, Libc.SoSndtimeo, options.SendTimeout, "SO_SNDTIMEO");
            if (options.ReceiveBufferSize > 0) SetBuffer(raw, Libc.SoRcvbufforce, Libc.SoRcvbuf, options.ReceiveBufferSize);
            if (options.SendBufferSize > 0) SetBuffer(raw, Libc.SoSndbufforce, Libc.SoSndbuf, options.SendBufferSize);
            // Errors echo only the request's header, not its payload (4.3+): smaller replies, fewer dropped.
            TrySetInt(raw, Libc.SolNetlink, Libc.NetlinkCapAck, 1);
            // Errors carry the kernel's text, e.g. "Attribute failed policy validation" (4.12+).
            TrySetInt(raw, Libc.SolNetlink, Libc.NetlinkExtAck, 1);

            var address = new Libc.SockaddrNl { Family = Netlink.AddressFamily };
            if (Libc.Bind(raw, &address, (uint)sizeof(Libc.SockaddrNl)) != 0)
                ThrowHelper.Errno(Marshal.GetLastPInvokeError(), "bind(AF_NETLINK)");
            var length = (uint)sizeof(Libc.SockaddrNl);
            if (Libc.GetSockName(raw, &address, &length) != 0)
                ThrowHelper.Errno(Marshal.GetLastPInvokeError(), "getsockname(AF_NETLINK)");
            return new NetlinkSocket(fd, address.PortId, options);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>Sends one datagram (one or more messages) to the kernel.</summary>
    /// <returns>False if the send timed out.</returns>
    public bool TrySend(ReadOnlySpan<byte> datagram, string request)
    {
        var added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            var fd = (int)_fd.DangerousGetHandle();
            var kernel = new Libc.SockaddrNl { Family = Netlink.AddressFamily };
            fixed (byte* data = datagram)
            {
                while (true)
                {
                    var sent = Libc.SendTo(fd, data, (nuint)datagram.Length, 0, &kernel, (uint)sizeof(Libc.SockaddrNl));
                    if (sent >= 0)
                    {
                        // A datagram socket sends all or nothing.
                        if (sent != datagram.Length) ThrowHelper.Errno(Errno.EMSGSIZE, $"send {request}");
                        return true;
                    }
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == Errno.EINTR) continue;
                    if (errno == Errno.EAGAIN) return false;
                    ThrowHelper.Errno(errno, $"send {request}");
                }
            }
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    /// <summary>
    /// Receives one datagram from the kernel into <paramref name="buffer"/>. Datagrams from anyone but the
    /// kernel (another process may send to our port id) are dropped.
    /// </summary>
    /// <returns>The datagram's length, or -1 if nothing arrived within the receive timeout.</returns>
    public int Receive(Span<byte> buffer, string request) => Receive(buffer, request, 0);

    /// <summary>As <see cref="Receive(Span{byte}, string)"/>, but -1 at once if no datagram is queued (MSG_DONTWAIT).</summary>
    public int ReceiveQueued(Span<byte> buffer, string request) => Receive(buffer, request, Libc.MsgDontwait);

    /// <summary>
    /// The largest datagram a send takes: netlink refuses one longer than the send buffer less 32 bytes
    /// (SO_SNDBUF reads back the doubled value the kernel keeps).
    /// </summary>
    public int SendLimit => GetInt(Libc.SolSocket, Libc.SoSndbuf) - 32;

    private int Receive(Span<byte> buffer, string request, int flags)
    {
        var added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            var fd = (int)_fd.DangerousGetHandle();
            fixed (byte* data = buffer)
            {
                while (true)
                {
                    var from = default(Libc.SockaddrNl);
                    var fromLength = (uint)sizeof(Libc.SockaddrNl);
                    // MSG_TRUNC: the return value is the datagram's real length even if it did not fit.
                    var received = Libc.RecvFrom(fd, data, (nuint)buffer.Length, Libc.MsgTrunc | flags, &from, &fromLength);
                    if (received < 0)
                    {
                        var errno = Marshal.GetLastPInvokeError();
                        if (errno == Errno.EINTR) continue;
                        if (errno == Errno.EAGAIN) return -1;
                        // ENOBUFS: the receive queue overflowed and the kernel dropped replies.
                        ThrowHelper.Errno(errno, $"receive {request}");
                    }
                    if (from.PortId != 0) continue;
                    if (received > buffer.Length)
                        throw new NetlinkException(Errno.EMSGSIZE, $"receive {request}",
                            $"a {received}-byte datagram does not fit the {buffer.Length}-byte receive buffer");
                    return (int)received;
                }
            }
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    /// <summary>The receive buffer size the kernel actually granted (SO_RCVBUF reads back the doubled value).</summary>
    public int ReceiveBufferSize => GetInt(Libc.SolSocket, Libc.SoRcvbuf);

    public void Dispose() => _fd.Dispose();

    private int GetInt(int level, int name)
    {
        var added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            int value;
            var length = (uint)sizeof(int);
            if (Libc.GetSockOpt((int)_fd.DangerousGetHandle(), level, name, &value, &length) != 0)
                ThrowHelper.Errno(Marshal.GetLastPInvokeError(), $"getsockopt({level}, {name})");
            return value;
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    private static void SetTimeout(int fd, int name, TimeSpan timeout, string what)
    {
        if (timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), timeout, $"{what} must be positive: zero would mean wait forever");
        var micros = (long)Math.Ceiling(timeout.TotalMicroseconds);
        var value = new Libc.Timeval { Seconds = micros / 1_000_000, Microseconds = micros % 1_000_000 };
        if (Libc.SetSockOpt(fd, Libc.SolSocket, name, &value, (uint)sizeof(Libc.Timeval)) != 0)
            ThrowHelper.Errno(Marshal.GetLastPInvokeError(), $"setsockopt({what})");
    }

    private static void SetBuffer(int fd, int forced, int capped, int size)
    {
        // The forced option needs CAP_NET_ADMIN (which IPVS needs anyway); without it, take what rmem_max allows.
        if (Libc.SetSockOpt(fd, Libc.SolSocket, forced, &size, sizeof(int)) == 0) return;
        if (Libc.SetSockOpt(fd, Libc.SolSocket, capped, &size, sizeof(int)) != 0)
            ThrowHelper.Errno(Marshal.GetLastPInvokeError(), "setsockopt(buffer size)");
    }

    private static void TrySetInt(int fd, int level, int name, int value) =>
        // Older kernels answer ENOPROTOOPT; the option is an improvement, not a requirement.
        Libc.SetSockOpt(fd, level, name, &value, sizeof(int));
}
