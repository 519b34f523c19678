using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;

namespace Merlin.Linux;

/// <summary>
/// The kernel refused a request (an NLMSG_ERROR with a negative errno, or an error in NLMSG_DONE), or a
/// socket call failed. Carries the errno, its name and what was asked, so a log line says
/// "IPVS NEW_SERVICE tcp:10.0.0.1:80: EEXIST (File exists)" rather than "error -17".
/// </summary>
public class NetlinkException : Exception
{
    public NetlinkException(int errno, string request, string? kernelMessage = null, Exception? inner = null)
        : base(Format(errno, request, kernelMessage), inner)
    {
        Errno = errno;
        Request = request;
        KernelMessage = kernelMessage;
    }

    /// <summary>The positive errno (17 for EEXIST).</summary>
    public int Errno { get; }

    /// <summary>The errno's symbolic name, e.g. "EEXIST".</summary>
    public string ErrorName => Merlin.Linux.Errno.Name(Errno);

    /// <summary>A description of the request that failed.</summary>
    public string Request { get; }

    /// <summary>The extended-ACK message the kernel attached (NLMSGERR_ATTR_MSG), if any.</summary>
    public string? KernelMessage { get; }

    private static string Format(int errno, string request, string? kernelMessage)
    {
        var text = $"{request}: {Merlin.Linux.Errno.Name(errno)} ({Marshal.GetPInvokeErrorMessage(errno)})";
        return kernelMessage is null ? text : $"{text}: {kernelMessage}";
    }
}

/// <summary>
/// Bytes that are not well-formed netlink: a length that runs past the data, an attribute of the wrong
/// width, a required attribute missing. Raised instead of reading out of range; nothing was trusted.
/// </summary>
public sealed class NetlinkDecodeException(string message) : Exception(message);

/// <summary>The kernel did not answer within the socket's timeout. The request's outcome is unknown.</summary>
public sealed class NetlinkTimeoutException(string request, TimeSpan timeout)
    : TimeoutException($"{request}: no reply from the kernel within {timeout.TotalMilliseconds:0} ms")
{
    public string Request { get; } = request;
}

/// <summary>Cold paths kept out of the hot methods so those stay small enough to inline.</summary>
[StackTraceHidden]
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void Decode(string message) => throw new NetlinkDecodeException(message);

    [DoesNotReturn]
    public static T Decode<T>(string message) => throw new NetlinkDecodeException(message);

    [DoesNotReturn]
    public static void AttributeWidth(ushort type, int expected, int actual) =>
        throw new NetlinkDecodeException($"attribute {type}: payload of {actual} bytes where the type is {expected} bytes wide");

    [DoesNotReturn]
    public static void TooLong(string what, int length, int max) =>
        throw new ArgumentOutOfRangeException(what, length, $"{what} of {length} bytes exceeds the netlink limit of {max}");

    [DoesNotReturn]
    public static void Errno(int errno, string request) => throw new NetlinkException(errno, request);
}
