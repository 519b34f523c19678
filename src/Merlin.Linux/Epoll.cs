using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Merlin.Linux;

/// <summary>
/// epoll(7) for an event loop of its own (the HTTP probe's). Calls return what libc returns: -1 with the
/// errno in <see cref="Marshal.GetLastPInvokeError"/> on failure, never an exception.
/// </summary>
public static unsafe class Epoll
{
    public const int Cloexec = 0x80000;
    public const int Add = 1, Delete = 2, Modify = 3;
    public const uint In = 0x001, Out = 0x004, Error = 0x008, HangUp = 0x010, ReadHangUp = 0x2000;

    /// <summary>
    /// sizeof(struct epoll_event): packed on x86-64 (12 bytes: events, then data at offset 4), naturally
    /// aligned elsewhere (16 bytes, data at offset 8).
    /// </summary>
    public static readonly int EventSize = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;

    /// <summary>Where an event's 64-bit data sits in it (after the 32-bit events).</summary>
    public static readonly int EventDataOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 4 : 8;

    /// <summary>epoll_create1(2).</summary>
    public static int Create(int flags) => Libc.EpollCreate1(flags);

    /// <summary>Registers (<see cref="Add"/>) or changes (<see cref="Modify"/>) <paramref name="fd"/>'s interest; its events carry <paramref name="data"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Control(int epfd, int op, int fd, uint events, ulong data)
    {
        var ev = stackalloc byte[16];
        *(uint*)ev = events;
        *(ulong*)(ev + EventDataOffset) = data;
        return Libc.EpollCtl(epfd, op, fd, ev);
    }

    /// <summary>epoll_wait(2) into <paramref name="events"/>, <see cref="EventSize"/> bytes an event.</summary>
    public static int Wait(int epfd, byte* events, int maxEvents, int timeoutMs) => Libc.EpollWait(epfd, events, maxEvents, timeoutMs);
}

/// <summary>eventfd(2): a counter an event loop watches, to be woken from another thread.</summary>
public static unsafe class EventFd
{
    public const int Nonblock = 0x800, Cloexec = 0x80000;

    /// <summary>A new eventfd, or -1 with the errno in <see cref="Marshal.GetLastPInvokeError"/>.</summary>
    public static int Create(uint initial, int flags) => Libc.EventFd(initial, flags);

    /// <summary>Adds one to the counter (wakes a waiter).</summary>
    public static void Signal(int fd)
    {
        ulong one = 1;
        Libc.Write(fd, (byte*)&one, 8);
    }

    /// <summary>Reads the counter back to zero (non-blocking eventfd: nothing happens if it is zero).</summary>
    public static void Drain(int fd)
    {
        ulong count;
        Libc.Read(fd, (byte*)&count, 8);
    }
}

/// <summary>read, write and close on a raw file descriptor; libc's results (-1 and the errno on failure).</summary>
public static unsafe class FileDescriptor
{
    public static nint Read(int fd, byte* buffer, nuint length) => Libc.Read(fd, buffer, length);

    public static nint Write(int fd, byte* buffer, nuint length) => Libc.Write(fd, buffer, length);

    public static int Close(int fd) => Libc.Close(fd);
}

/// <summary>The calling thread as the kernel knows it.</summary>
public static class KernelThread
{
    /// <summary>gettid(2): the thread's id, as /proc/&lt;pid&gt;/task lists it.</summary>
    public static int CurrentId() => Libc.GetTid();
}
