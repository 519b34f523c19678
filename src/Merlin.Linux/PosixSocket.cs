using System.Runtime.InteropServices;

namespace Merlin.Linux;

/// <summary>
/// BSD socket calls on a raw descriptor, for a loop that drives many non-blocking sockets itself without
/// allocating (the HTTP probe). Calls return what libc returns: -1 with the errno in
/// <see cref="Marshal.GetLastPInvokeError"/> on failure, never an exception. Everyone else uses
/// System.Net.Sockets.Socket (or <see cref="NetworkNamespace.CreateSocket"/> for one in a namespace).
/// </summary>
public static unsafe class PosixSocket
{
    public const int InterNetwork = 2, InterNetworkV6 = 10;
    public const int Stream = 1, Nonblock = 0x800, Cloexec = 0x80000;
    public const int IpProtoTcp = 6, TcpNoDelay = 1;
    public const int SolSocket = 1, SoError = 4;
    public const int MsgNoSignal = 0x4000;

    /// <summary>socket(2) in this thread's namespace.</summary>
    public static int Open(int domain, int type, int protocol) => Libc.Socket(domain, type, protocol);

    /// <summary>connect(2) to a sockaddr of <paramref name="length"/> bytes.</summary>
    public static int Connect(int fd, byte* address, int length) => Libc.Connect(fd, address, (uint)length);

    public static nint Send(int fd, byte* buffer, nuint length, int flags) => Libc.Send(fd, buffer, length, flags);

    public static nint Receive(int fd, byte* buffer, nuint length, int flags) => Libc.Recv(fd, buffer, length, flags);

    public static int SetOption(int fd, int level, int name, byte* value, int length) => Libc.SetSockOpt(fd, level, name, value, (uint)length);

    public static int GetOption(int fd, int level, int name, byte* value, int* length) => Libc.GetSockOpt(fd, level, name, value, (uint*)length);
}
