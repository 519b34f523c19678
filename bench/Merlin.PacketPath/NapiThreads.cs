using System.Globalization;

namespace Merlin.PacketPath;

/// <summary>
/// The kernel threads of threaded NAPI (<c>napi/&lt;device&gt;-&lt;napi id&gt;</c>) and the CPU time each has run.
/// A NAPI thread does all of its device's receive work — the netdev ingress hook, nftables, <c>fwd</c> and the
/// transmit to the next link included — so its run time divided by the packets it handled is the kernel's
/// cost per packet, whatever else the machine runs (other processes' time is not on this clock).
/// </summary>
public static class NapiThreads
{
    /// <summary>Every NAPI kernel thread now: pid → name. Kernel threads are in the root PID namespace's /proc.</summary>
    public static Dictionary<int, string> List()
    {
        var threads = new Dictionary<int, string>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)) continue;
            try
            {
                var comm = File.ReadAllText(Path.Combine(dir, "comm")).TrimEnd('\n');
                if (comm.StartsWith("napi/", StringComparison.Ordinal)) threads[pid] = comm;
            }
            catch (IOException)
            {
                // gone between the listing and the read
            }
        }
        return threads;
    }

    /// <summary>
    /// The one thread named for <paramref name="device"/> that is in <paramref name="after"/> but not in
    /// <paramref name="before"/>: a device name such as eth0 repeats in every namespace, so a thread is told
    /// apart by appearing when this device's threaded NAPI was switched on.
    /// </summary>
    public static int NewThreadFor(string device, IReadOnlyDictionary<int, string> before, IReadOnlyDictionary<int, string> after)
    {
        var fresh = after.Where(t => !before.ContainsKey(t.Key) && t.Value.StartsWith($"napi/{device}-", StringComparison.Ordinal)).ToList();
        return fresh.Count == 1
            ? fresh[0].Key
            : throw new InvalidOperationException($"expected one new NAPI thread for {device}, found {fresh.Count} ({string.Join(", ", fresh.Select(t => $"{t.Value} pid {t.Key}"))}): another lab switching threaded NAPI on at the same moment? run again");
    }

    /// <summary>Nanoseconds the thread has run (the first field of /proc/PID/schedstat: the scheduler's sum_exec_runtime).</summary>
    public static long RunTimeNs(int pid)
    {
        var text = File.ReadAllText($"/proc/{pid}/schedstat");
        var end = text.IndexOf(' ');
        return long.Parse(end < 0 ? text.Trim() : text[..end], NumberStyles.None, CultureInfo.InvariantCulture);
    }
}
