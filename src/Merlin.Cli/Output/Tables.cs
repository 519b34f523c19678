using System.Globalization;
using Merlin.Model;

namespace Merlin.Cli.Output;

/// <summary>The human forms of <c>list</c> and <c>status</c>.</summary>
public static class Tables
{
    public const string ServerPrefix = "  -> ";

    /// <summary>
    /// ipvsadm's shape: a service line, then its servers indented under it. Service lines align with
    /// each other and with the first header, server lines with each other and with the second header.
    /// </summary>
    public static void WriteList(TextWriter writer, ServiceList list)
    {
        var table = new ListWriter(writer, stats: list.Services.Any(s => s.Stats is not null));
        table.Write(list);
        table.End();
    }

    /// <summary>
    /// Prints a list that arrives in parts (ListStream), each part as soon as it is there: columns are as wide as
    /// the widest cell so far, so a later part may be wider than the lines printed before it.
    /// </summary>
    public sealed class ListWriter(TextWriter writer, bool stats)
    {
        private int[]? _serviceWidths, _serverWidths;

        public void Write(ServiceList part)
        {
            if (part.Services.Count == 0) return;
            // With --stats, ipvsadm --stats' counters follow the configuration columns.
            string[] serviceStats = stats ? ["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES"] : [];
            string[] serverStats = stats ? ["ACTIVE", "INACTIVE", "CONNS", "INPKTS", "INBYTES"] : [];
            var services = new Table(["ID", "PROTO", "ADDRESS", "SCHEDULER", "FLAGS", "PERSISTENCE", .. serviceStats]);
            var servers = new Table(["SERVER", "WEIGHT", "FORWARD", "THRESHOLDS", .. serverStats, "HEALTH CHECK"]);
            var serverRows = new List<(int Service, int Row)>();
            foreach (var s in part.Services)
            {
                string[] serviceCounters = !stats ? [] : s.Stats is { } t
                    ? [Count(t.Connections), Count(t.InPackets), Count(t.OutPackets), Bytes(t.InBytes), Bytes(t.OutBytes)]
                    : ["-", "-", "-", "-", "-"];
                services.Add([
                    s.Id,
                    s.Protocol,
                    s.Fwmark is { } mark ? $"fwmark {mark}" + (s.Family == "ipv6" ? " (ipv6)" : "") : s.Address ?? "-",
                    Dash(s.Scheduler),
                    Dash(string.Join(",", s.OnePacket ? [.. s.Flags, "one-packet"] : s.Flags)),
                    Persistence(s),
                    .. serviceCounters]);
                foreach (var r in s.Servers)
                {
                    string[] serverCounters = !stats ? [] : r.Stats is { } c
                        ? [Count(c.ActiveConnections), Count(c.InactiveConnections), Count(c.Connections), Count(c.InPackets), Bytes(c.InBytes)]
                        : ["-", "-", "-", "-", "-"];
                    servers.Add([r.Address, Weight(r), Forward(r), Thresholds(r), .. serverCounters, Verdict(r.Health) + Health(r.HealthCheck)]);
                    serverRows.Add((services.Rows.Count - 1, servers.Rows.Count - 1));
                }
            }
            var first = _serviceWidths is null;
            _serviceWidths = Wider(_serviceWidths, services.Widths());
            _serverWidths = Wider(_serverWidths, servers.Widths());
            if (first)
            {
                writer.WriteLine(services.Line(0, _serviceWidths));
                writer.WriteLine(servers.Line(0, _serverWidths, ServerPrefix));
            }
            var next = 0;
            for (var i = 1; i < services.Rows.Count; i++)
            {
                writer.WriteLine(services.Line(i, _serviceWidths));
                for (; next < serverRows.Count && serverRows[next].Service == i; next++)
                    writer.WriteLine(servers.Line(serverRows[next].Row, _serverWidths, ServerPrefix));
            }
        }

        /// <summary>After the last part: says so when there was nothing.</summary>
        public void End()
        {
            if (_serviceWidths is null) writer.WriteLine("No services.");
        }

        private static int[] Wider(int[]? before, int[] now) => before is null ? now : [.. before.Zip(now, Math.Max)];
    }

    public static void WriteStatus(TextWriter writer, StatusView s)
    {
        var table = new Table("", "");
        table.Add("version", Dash(s.Version));
        table.Add("ready", s.Ready ? "yes" : "no");
        if (s.NodeDrained) table.Add("node", "DRAINED (announces no VIP; meradm node undrain ends it)");
        table.Add("store", $"{Dash(s.StoreBackend)} ({(s.StoreReachable ? "reachable" : "UNREACHABLE")})");
        table.Add("dataplane", Dash(s.Dataplane));
        if (s.Compatibility.Length > 0) table.Add("compatibility", Commands.CompatCommand.Describe(s.Compatibility));
        if (MixedFleet(s) is { } mixed) table.Add("mixed fleet", mixed);
        table.Add("last reconcile", s.SinceLastReconcileSeconds is { } ago ? Durations.Format(TimeSpan.FromSeconds(Math.Round(ago, 1))) + " ago" : "never");
        table.Add("reconcile passes", s.ReconcilePasses.ToString(CultureInfo.InvariantCulture));
        table.Add("reconcile errors", s.ReconcileErrors.ToString(CultureInfo.InvariantCulture));
        table.Add("operations applied", s.OperationsApplied.ToString(CultureInfo.InvariantCulture));
        table.Add("last error", s.LastError ?? "-");
        table.Add("services", s.Services.ToString(CultureInfo.InvariantCulture));
        table.Add("servers", s.Servers.ToString(CultureInfo.InvariantCulture));
        if (s.ServersUp + s.ServersDown + s.ServersUnknown > 0)
            table.Add("health checks", $"{s.ServersUp} up, {s.ServersDown} down, {s.ServersUnknown} unknown");
        if (s.Announcer.Length > 0)
        {
            var state = s.AnnouncerState is { } st ? $" {st}" + (s.AnnouncerStateSeconds is { } secs ? $" for {Durations.Format(TimeSpan.FromSeconds(Math.Round(secs)))}" : "") : "";
            table.Add("announcer", $"{s.Announcer}{state}{(s.AnnouncerHealthy ? "" : " (UNHEALTHY)")}{(s.AnnouncerRestarts > 0 ? $", {s.AnnouncerRestarts} restarts" : "")}");
            if (s.AnnouncerDetail is { } detail) table.Add("announcer detail", detail);
            foreach (var v in s.Vips)
                table.Add(v.Management ? "management vip" : "vip", $"{v.Address} {(v.Announced ? s.Announcer == "bgp" ? "announced" : "held here" : s.Announcer == "bgp" ? "not announced" : "not here")}");
        }
        foreach (var x in s.Sysctls)
            table.Add($"sysctl {x.Name}", x.Drifted ? $"{x.Have ?? "unreadable"} (DRIFT: want {x.Want}{(x.Managed ? "" : "; --manage-sysctls sets it")})" : x.Have ?? "-");
        foreach (var t in s.Tables)
            table.Add("md-table", $"{t.Service} {t.Hash}{(t.Problem is { } p ? $" (RECOMPUTED: stored table {p})" : "")}, {Plural((uint)t.Changes, "change")}, {Plural((uint)t.SlotsMoved, "slot")} moved");
        foreach (var w in s.Warnings) table.Add("warning", w);
        var widths = table.Widths();
        for (var i = 1; i < table.Rows.Count; i++) writer.WriteLine(table.Line(i, widths));
    }

    /// <summary>
    /// What the store says of other writers: shown while there are any, and while the compatibility mode is on (then
    /// "0 services, 0 servers" is the news that the Go merlins stopped writing).
    /// </summary>
    private static string? MixedFleet(StatusView s)
    {
        if (s.ServicesNotByMerlin is not { } services || s.ServersNotByMerlin is not { } servers) return null;
        if (services + servers + s.OrphanedServers == 0 && s.Compatibility.Length == 0) return null;
        var orphans = s.OrphanedServers == 0 ? "" : $", {Plural(s.OrphanedServers, "orphaned server key")} (of services deleted by a Go merlin)";
        return $"records last written by a Go merlin (or an older Merlin): {Plural(services, "service")}, {Plural(servers, "server")}{orphans}";
    }

    private static string Plural(uint n, string what) => $"{n} {what}{(n == 1 ? "" : "s")}";

    private static string Count(ulong n) => n.ToString(CultureInfo.InvariantCulture);

    /// <summary>ipvsadm's short form: 1234, 56K, 7M, 8G (powers of 1000).</summary>
    private static string Bytes(ulong n) => n switch
    {
        < 100_000 => n.ToString(CultureInfo.InvariantCulture),
        < 100_000_000 => $"{n / 1000}K",
        < 100_000_000_000 => $"{n / 1_000_000}M",
        _ => $"{n / 1_000_000_000}G",
    };

    private static string Persistence(ServiceView s)
    {
        if (s.PersistenceTimeout == 0) return "-";
        var text = $"{s.PersistenceTimeout}s";
        var full = s.Family == "ipv6" ? 128u : 32u;
        return s.PersistenceNetmask == full ? text : $"{text} /{s.PersistenceNetmask}";
    }

    /// <summary>The configured weight; a draining server's says so and how long it has left ("5 (draining, 4m12s left)").</summary>
    private static string Weight(ServerView r)
    {
        var weight = r.Weight?.ToString(CultureInfo.InvariantCulture) ?? "-";
        if (r.DrainSecondsLeft is not { } left) return weight;
        return left > 0 ? $"{weight} (draining, {Durations.Format(TimeSpan.FromSeconds(left))} left)" : $"{weight} (draining, removal due)";
    }

    private static string Forward(ServerView r)
    {
        if (r.Tunnel is not { } t) return r.Forward;
        var text = $"tunnel {t.Type}";
        if (t.Port is { } port) text += $":{port}";
        if (t.Flags.Count > 0) text += " " + string.Join(",", t.Flags);
        return text;
    }

    private static string Thresholds(ServerView r) =>
        (r.UpperThreshold, r.LowerThreshold) switch
        {
            (0, 0) => "-",
            (var upper, 0) => $"upper {upper}",
            (0, var lower) => $"lower {lower}",
            var (upper, lower) => $"upper {upper} lower {lower}",
        };

    /// <summary>"UP: ", "DOWN (HTTP 503): ", "UNKNOWN: " before the check's description.</summary>
    private static string Verdict(ServerHealthView? h) => h is null
        ? ""
        : h.Verdict == "down" ? $"DOWN ({h.Detail}): " : $"{h.Verdict.ToUpperInvariant()}: ";

    private static string Health(HealthCheckView? h) =>
        h is null
            ? "-"
            : $"{h.Endpoint} every {Durations.Format(TimeSpan.FromSeconds(h.PeriodSeconds))}" +
              $" timeout {Durations.Format(TimeSpan.FromSeconds(h.TimeoutSeconds))} up {h.UpThreshold} down {h.DownThreshold}";

    private static string Dash(string text) => text.Length == 0 ? "-" : text;
}
