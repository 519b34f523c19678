using System.Text.Json;
using Merlin.Contracts;

namespace Merlin.Cli.Tests;

public class OutputTests
{
    [Fact]
    public async Task List_Table_ShowsServicesWithTheirServersIndented()
    {
        var run = await Meradm.RunAsync(c => c.ListResponse = Canned.List(), "list");

        const string expected = """
            ID        PROTO  ADDRESS            SCHEDULER  FLAGS                PERSISTENCE
              -> SERVER              WEIGHT  FORWARD               THRESHOLDS            HEALTH CHECK
            dns-mark  udp    fwmark 7 (ipv6)    rr         one-packet           -
            web       tcp    198.18.0.10:80     sh         sh-fallback,sh-port  300s /24
              -> 198.18.1.9:80       100     route                 -                     http://:8080/health every 10s timeout 1.5s up 2 down 1
              -> 198.18.1.10:80      0       tunnel gue:6080 csum  upper 1000 lower 800  -
            web6      tcp    [2001:db8::1]:443  mh         mh-port              -
              -> [2001:db8::10]:443  1       masq                  -                     -

            """;
        Assert.Equal(0, run.ExitCode);
        Assert.Equal(expected.ReplaceLineEndings("\n"), run.Out);
        Assert.Equal("", run.Err);
        // The fake has no ListStream, as a Go merlin: meradm asked for it, then fell back to List.
        Assert.Equal(["ListStream", "List"], run.Client.Calls.Select(c => c.Method));
    }

    [Fact]
    public async Task List_FromADaemonWithListStream_PrintsItsPartsAsOneTable_AndJsonAsOneDocument()
    {
        var whole = Canned.List();
        var ordered = whole.Items.OrderBy(i => i.Service.Id, StringComparer.Ordinal).ToList(); // a daemon sends the store's order
        var first = new ListResponse { Items = { ordered[0], ordered[1] }, Now = whole.Now };
        var second = new ListResponse { Items = { ordered[2] }, Now = whole.Now };
        var fromList = await Meradm.RunAsync(c => c.ListResponse = whole, "list");
        var fromListJson = await Meradm.RunAsync(c => c.ListResponse = whole, "list", "--output", "json");

        var streamed = await Meradm.RunAsync(c => c.ListParts = [first, second], "list");
        var streamedJson = await Meradm.RunAsync(c => c.ListParts = [first, second], "list", "--output", "json");

        Assert.Equal(0, streamed.ExitCode);
        Assert.Equal("ListStream", Assert.Single(streamed.Client.Calls).Method);
        // The same rows as List's table; columns only widen as parts come (a part is printed before the next arrives).
        Assert.Equal(Cells(fromList.Out), Cells(streamed.Out));
        Assert.Equal(fromListJson.Out, streamedJson.Out);
        Assert.Equal("No services.\n", (await Meradm.RunAsync(c => c.ListParts = [new ListResponse()], "list")).Out);
    }

    private static string[] Cells(string table) =>
        [.. table.Split('\n').Select(line => System.Text.RegularExpressions.Regex.Replace(line, "  +", "  "))];

    [Fact]
    public async Task List_Stats_AddsTheKernelCountersOfProgrammedServicesAndServers()
    {
        var run = await Meradm.RunAsync(c =>
        {
            c.ListResponse = Canned.List();
            c.CountersResponse = Canned.Counters();
        }, "list", "--stats");

        // web is programmed (with one of its two servers); the others are not, and show dashes.
        const string expected = """
            ID        PROTO  ADDRESS            SCHEDULER  FLAGS                PERSISTENCE  CONNS  INPKTS  OUTPKTS  INBYTES  OUTBYTES
              -> SERVER              WEIGHT  FORWARD               THRESHOLDS            ACTIVE  INACTIVE  CONNS  INPKTS  INBYTES  HEALTH CHECK
            dns-mark  udp    fwmark 7 (ipv6)    rr         one-packet           -            -      -       -        -        -
            web       tcp    198.18.0.10:80     sh         sh-fallback,sh-port  300s /24     1200   98000   0        7345K    0
              -> 198.18.1.9:80       100     route                 -                     3       17        1200   98000   7345K    http://:8080/health every 10s timeout 1.5s up 2 down 1
              -> 198.18.1.10:80      0       tunnel gue:6080 csum  upper 1000 lower 800  -       -         -      -       -        -
            web6      tcp    [2001:db8::1]:443  mh         mh-port              -            -      -       -        -        -
              -> [2001:db8::10]:443  1       masq                  -                     -       -         -      -       -        -

            """;
        Assert.Equal(0, run.ExitCode);
        Assert.Equal(expected.ReplaceLineEndings("\n"), run.Out);
        Assert.Equal(["Counters", "ListStream", "List"], run.Client.Calls.Select(c => c.Method));
    }

    [Fact]
    public async Task List_Stats_Json_CarriesTheCounters()
    {
        var run = await Meradm.RunAsync(c =>
        {
            c.ListResponse = Canned.List();
            c.CountersResponse = Canned.Counters();
        }, "list", "--stats", "-o", "json");

        Assert.Equal(0, run.ExitCode);
        using var doc = JsonDocument.Parse(run.Out);
        var web = doc.RootElement.GetProperty("services").EnumerateArray().Single(s => s.GetProperty("id").GetString() == "web");
        Assert.Equal(1200, web.GetProperty("stats").GetProperty("connections").GetInt64());
        Assert.Equal(7_345_678, web.GetProperty("stats").GetProperty("inBytes").GetInt64());
        var server = web.GetProperty("servers")[0].GetProperty("stats");
        Assert.Equal(3, server.GetProperty("activeConnections").GetInt32());
        Assert.Equal(17, server.GetProperty("inactiveConnections").GetInt32());
        Assert.Equal(JsonValueKind.Null, web.GetProperty("servers")[1].GetProperty("stats").ValueKind);
    }

    [Fact]
    public async Task Status_Table_ShowsSysctlDriftAndWarnings()
    {
        var status = Canned.Status();
        status.Dataplane = "ipvs";
        status.Sysctls.Add(new StatusResponse.Types.Sysctl { Name = "net.ipv4.vs.sloppy_tcp", Want = "1", Have = "1", Why = "failover" });
        status.Sysctls.Add(new StatusResponse.Types.Sysctl { Name = "net.ipv4.vs.conn_reuse_mode", Want = "2", Have = "1", Why = "reschedule" });
        status.Warnings.Add("sysctl net.ipv4.vs.conn_reuse_mode is 1, want 2: reschedule (start with --manage-sysctls to set it)");

        var run = await Meradm.RunAsync(c => c.StatusResponse = status, "status");

        Assert.Equal(0, run.ExitCode);
        Assert.Contains("sysctl net.ipv4.vs.sloppy_tcp       1\n", run.Out);
        Assert.Contains("sysctl net.ipv4.vs.conn_reuse_mode  1 (DRIFT: want 2; --manage-sysctls sets it)\n", run.Out);
        Assert.Contains("warning".PadRight(36) + "sysctl net.ipv4.vs.conn_reuse_mode is 1, want 2", run.Out);
    }

    [Fact]
    public async Task List_ShowsTheNodesHealthVerdicts()
    {
        var list = Canned.List();
        var web = list.Items.Single(i => i.Service.Id == "web");
        web.Health.Add(new ServerHealth { Key = new() { Ip = "198.18.1.9", Port = 80 }, Verdict = "down", Detail = "HTTP 503", Since = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(DateTimeOffset.Parse("2026-11-26T10:00:00Z")) });

        var table = await Meradm.RunAsync(c => c.ListResponse = list, "list");
        Assert.Contains("  -> 198.18.1.9:80       100     route                 -                     DOWN (HTTP 503): http://:8080/health every 10s", table.Out);

        var json = await Meradm.RunAsync(c => c.ListResponse = list, "list", "-o", "json");
        using var doc = JsonDocument.Parse(json.Out);
        var servers = doc.RootElement.GetProperty("services").EnumerateArray().Single(s => s.GetProperty("id").GetString() == "web").GetProperty("servers");
        Assert.Equal("down", servers[0].GetProperty("health").GetProperty("verdict").GetString());
        Assert.Equal(JsonValueKind.Null, servers[1].GetProperty("health").ValueKind);
    }

    [Fact]
    public async Task List_Empty_SaysSo()
    {
        var run = await Meradm.RunAsync("list");

        Assert.Equal(0, run.ExitCode);
        Assert.Equal("No services.\n", run.Out);
    }

    [Fact]
    public async Task List_EmptyJson_IsAnEmptyArray()
    {
        var run = await Meradm.RunAsync("list", "--output", "json");

        using var doc = JsonDocument.Parse(run.Out);
        Assert.Equal(0, doc.RootElement.GetProperty("services").GetArrayLength());
    }

    [Theory]
    [InlineData("list", "--output", "json")]
    [InlineData("list", "-o", "JSON")]
    [InlineData("--output", "json", "list")]
    [InlineData("ls", "-o", "json")]
    public async Task List_Json_HasStableFieldsForEveryServiceAndServer(params string[] args)
    {
        var run = await Meradm.RunAsync(c => c.ListResponse = Canned.List(), args);

        Assert.Equal(0, run.ExitCode);
        using var doc = JsonDocument.Parse(run.Out);
        var services = doc.RootElement.GetProperty("services").EnumerateArray().ToList();
        Assert.Equal(["dns-mark", "web", "web6"], services.Select(s => s.GetProperty("id").GetString()));

        string[] serviceFields = ["id", "protocol", "family", "address", "ip", "port", "fwmark", "scheduler", "flags",
            "persistenceTimeout", "persistenceNetmask", "onePacket", "servers", "stats", "table"];
        string[] serverFields = ["address", "ip", "port", "weight", "forward", "tunnel", "upperThreshold", "lowerThreshold", "healthCheck", "stats", "health", "drainDeadline", "drainSecondsLeft"];
        foreach (var service in services)
        {
            Assert.Equal(serviceFields, service.EnumerateObject().Select(p => p.Name));
            foreach (var server in service.GetProperty("servers").EnumerateArray())
                Assert.Equal(serverFields, server.EnumerateObject().Select(p => p.Name));
        }

        var mark = services[0];
        Assert.Equal(7, mark.GetProperty("fwmark").GetInt32());
        Assert.Equal("ipv6", mark.GetProperty("family").GetString());
        Assert.Equal(JsonValueKind.Null, mark.GetProperty("address").ValueKind);
        Assert.True(mark.GetProperty("onePacket").GetBoolean());

        var web = services[1];
        Assert.Equal("198.18.0.10:80", web.GetProperty("address").GetString());
        Assert.Equal(["sh-fallback", "sh-port"], web.GetProperty("flags").EnumerateArray().Select(f => f.GetString()));
        Assert.Equal(300, web.GetProperty("persistenceTimeout").GetInt32());
        Assert.Equal(24, web.GetProperty("persistenceNetmask").GetInt32());
        var servers = web.GetProperty("servers").EnumerateArray().ToList();
        Assert.Equal(["198.18.1.9:80", "198.18.1.10:80"], servers.Select(s => s.GetProperty("address").GetString()));
        var health = servers[0].GetProperty("healthCheck");
        Assert.Equal("http://:8080/health", health.GetProperty("endpoint").GetString());
        Assert.Equal(10, health.GetProperty("periodSeconds").GetDouble());
        Assert.Equal(1.5, health.GetProperty("timeoutSeconds").GetDouble());
        Assert.Equal(2, health.GetProperty("upThreshold").GetInt32());
        Assert.Equal(1, health.GetProperty("downThreshold").GetInt32());
        Assert.Equal("route", servers[0].GetProperty("forward").GetString());
        Assert.Equal(0, servers[1].GetProperty("weight").GetInt32());
        var tunnel = servers[1].GetProperty("tunnel");
        Assert.Equal("gue", tunnel.GetProperty("type").GetString());
        Assert.Equal(6080, tunnel.GetProperty("port").GetInt32());
        Assert.Equal(1000, servers[1].GetProperty("upperThreshold").GetInt32());
        Assert.Equal(JsonValueKind.Null, servers[1].GetProperty("healthCheck").ValueKind);

        var web6 = services[2];
        Assert.Equal(["mh-port"], web6.GetProperty("flags").EnumerateArray().Select(f => f.GetString()));
        Assert.Equal("[2001:db8::1]:443", web6.GetProperty("address").GetString());
        Assert.Equal("2001:db8::1", web6.GetProperty("ip").GetString());
        Assert.Equal(128, web6.GetProperty("persistenceNetmask").GetInt32());
        var server6 = Assert.Single(web6.GetProperty("servers").EnumerateArray());
        Assert.Equal("[2001:db8::10]:443", server6.GetProperty("address").GetString());
        Assert.Equal("masq", server6.GetProperty("forward").GetString());
    }

    [Fact]
    public async Task List_UnknownEnumValuesFromANewerDaemon_AreShownAsNumbers()
    {
        var list = new ListResponse
        {
            Items =
            {
                new ListResponse.Types.Item
                {
                    Service = new() { Id = "future", Key = new() { Ip = "198.18.0.1", Port = 80, Protocol = (Protocol)9 }, Config = new() { Scheduler = "rr" } },
                    Servers = { new RealServer { Key = new() { Ip = "198.18.1.1", Port = 80 }, Config = new() { Weight = 1, Forward = (ForwardMethod)7 } } },
                },
            },
        };
        var run = await Meradm.RunAsync(c => c.ListResponse = list, "list");

        Assert.Equal(0, run.ExitCode);
        Assert.Contains("future  9 ", run.Out);
        Assert.Contains("198.18.1.1:80  1       7 ", run.Out);
    }

    [Theory]
    [InlineData("sh", "flag-1,flag-2", "sh-fallback,sh-port")]
    [InlineData("mh", "flag-2", "mh-port")]
    [InlineData("sh", "sh-port", "sh-port")]
    [InlineData("rr", "flag-3", "flag-3")]
    [InlineData("wlc", "", "")]
    public void FlagNames_ShowTheSchedulersOwnNames(string scheduler, string stored, string shown)
    {
        Assert.Equal(shown, string.Join(",", Output.Views.FlagNames(scheduler, stored.Split(','))));
    }

    [Fact]
    public async Task NodeDrain_CallsDrainNode_AndShowsTheDrainedNodesBgpState()
    {
        var status = Canned.Status();
        status.NodeDrained = true;
        status.Announcer = "bgp";
        status.AnnouncerHealthy = true;
        status.AnnouncerDetail = "1/1 sessions established; 0 routes announced";
        status.Vips.Add(new StatusResponse.Types.Vip { Address = "198.18.0.100", Announced = false });
        status.Warnings.Add("no VIP is announced: the node is drained (meradm node undrain ends it)");

        var run = await Meradm.RunAsync(c => c.StatusResponse = status, "node", "drain");

        Assert.Equal(0, run.ExitCode);
        Assert.Equal("DrainNode", Assert.Single(run.Client.Calls).Method);
        Assert.Contains("node                DRAINED (announces no VIP; meradm node undrain ends it)\n", run.Out);
        Assert.Contains("announcer           bgp\n", run.Out);
        Assert.Contains("vip                 198.18.0.100 not announced\n", run.Out);
        var json = await Meradm.RunAsync(c => c.StatusResponse = status, "node", "undrain", "-o", "json");
        Assert.Equal("UndrainNode", Assert.Single(json.Client.Calls).Method);
        Assert.Contains("\"nodeDrained\": true", json.Out);
    }

    [Fact]
    public async Task Status_Table_IsOneFactPerLine()
    {
        var run = await Meradm.RunAsync(c => c.StatusResponse = Canned.Status(), "status");

        const string expected = """
            version             0.1.0
            ready               yes
            store               sqlite (reachable)
            dataplane           none
            last reconcile      3.2s ago
            reconcile passes    120
            reconcile errors    2
            operations applied  42
            last error          -
            services            3
            servers             3

            """;
        Assert.Equal(0, run.ExitCode);
        Assert.Equal(expected.ReplaceLineEndings("\n"), run.Out);
        Assert.Equal("Status", Assert.Single(run.Client.Calls).Method);
    }

    [Fact]
    public async Task Status_AMixedFleet_CountsTheRecordsOtherWritersLeft_InTheTableAndTheJson()
    {
        var status = Canned.Status();
        status.ServicesNotByMerlin = 2;
        status.ServersNotByMerlin = 1;
        status.OrphanedServers = 3;
        var run = await Meradm.RunAsync(c => c.StatusResponse = status, "status");
        var json = await Meradm.RunAsync(c => c.StatusResponse = status, "status", "-o", "json");

        Assert.Contains("\nmixed fleet         records last written by a Go merlin (or an older Merlin): 2 services, 1 server, " +
            "3 orphaned server keys (of services deleted by a Go merlin)\n", run.Out);
        Assert.Contains("\"servicesNotByMerlin\": 2,\n  \"serversNotByMerlin\": 1,\n  \"orphanedServers\": 3,\n", json.Out.ReplaceLineEndings("\n"));
    }

    [Fact]
    public async Task Status_NoOtherWriter_IsNewsOnlyWhileTheCompatibilityModeIsOn()
    {
        var status = Canned.Status();
        status.ServicesNotByMerlin = 0;
        status.ServersNotByMerlin = 0;
        Assert.DoesNotContain("mixed fleet", (await Meradm.RunAsync(c => c.StatusResponse = status, "status")).Out);

        status.Compatibility = "go-merlin";
        Assert.Contains("\nmixed fleet         records last written by a Go merlin (or an older Merlin): 0 services, 0 servers\n",
            (await Meradm.RunAsync(c => c.StatusResponse = status, "status")).Out);

        // A daemon that does not count says nothing, rather than a zero it does not know.
        status.ClearServicesNotByMerlin();
        status.ClearServersNotByMerlin();
        Assert.DoesNotContain("mixed fleet", (await Meradm.RunAsync(c => c.StatusResponse = status, "status")).Out);
    }

    [Fact]
    public async Task Status_StoreDownAndNeverReconciled_SaysSoPlainly()
    {
        var status = Canned.Status();
        status.StoreReachable = false;
        status.Ready = false;
        status.SinceLastReconcile = null;
        status.LastError = "etcd: connection refused";
        var run = await Meradm.RunAsync(c => c.StatusResponse = status, "status");

        Assert.Contains("ready               no\n", run.Out);
        Assert.Contains("store               sqlite (UNREACHABLE)\n", run.Out);
        Assert.Contains("last reconcile      never\n", run.Out);
        Assert.Contains("last error          etcd: connection refused\n", run.Out);
    }

    [Fact]
    public async Task Status_Vrrp_ShowsTheStateAndWhichVipsAreHeldHere()
    {
        var status = Canned.Status();
        status.Announcer = "vrrp";
        status.AnnouncerState = "BACKUP";
        status.AnnouncerHealthy = true;
        status.AnnouncerDetail = "a peer holds the VIPs (instance merlin_51 on eth0, priority 100)";
        status.Vips.Add(new StatusResponse.Types.Vip { Address = "198.18.0.9", Announced = false, Management = true });
        status.Vips.Add(new StatusResponse.Types.Vip { Address = "198.18.0.100", Announced = false });
        var run = await Meradm.RunAsync(c => c.StatusResponse = status, "status");

        Assert.Contains("announcer           vrrp BACKUP\n", run.Out);
        Assert.Contains("announcer detail    a peer holds the VIPs (instance merlin_51 on eth0, priority 100)\n", run.Out);
        Assert.Contains("management vip      198.18.0.9 not here\n", run.Out);
        Assert.Contains("vip                 198.18.0.100 not here\n", run.Out);
    }

    [Fact]
    public async Task Status_ShowsEachMdTableAsThisNodeProgramsIt_SoNodesCanBeCompared()
    {
        var status = Canned.Status();
        status.Tables.Add(new StatusResponse.Types.Table { Service = "tcp:198.18.0.10:80", Hash = "0123456789abcdef", Changes = 2, SlotsMoved = 205 });
        status.Tables.Add(new StatusResponse.Types.Table { Service = "tcp:198.18.0.11:80", Hash = "fedcba9876543210", Problem = "damaged (hash mismatch)" });
        var run = await Meradm.RunAsync(c => c.StatusResponse = status, "status");
        var json = await Meradm.RunAsync(c => c.StatusResponse = status, "status", "-o", "json");

        Assert.Contains("\nmd-table            tcp:198.18.0.10:80 0123456789abcdef, 2 changes, 205 slots moved\n", run.Out);
        Assert.Contains("\nmd-table            tcp:198.18.0.11:80 fedcba9876543210 (RECOMPUTED: stored table damaged (hash mismatch)), 0 changes, 0 slots moved\n", run.Out);
        Assert.Contains("""
              "tables": [
                {
                  "service": "tcp:198.18.0.10:80",
                  "hash": "0123456789abcdef",
                  "problem": null,
                  "changes": 2,
                  "slotsMoved": 205
                },
            """.ReplaceLineEndings("\n"), json.Out.ReplaceLineEndings("\n"));
    }

    [Fact]
    public async Task Status_Json_IsExact()
    {
        var run = await Meradm.RunAsync(c => c.StatusResponse = Canned.Status(), "status", "--output", "json");

        const string expected = """
            {
              "version": "0.1.0",
              "ready": true,
              "storeBackend": "sqlite",
              "storeReachable": true,
              "dataplane": "none",
              "sinceLastReconcileSeconds": 3.2,
              "reconcilePasses": 120,
              "reconcileErrors": 2,
              "operationsApplied": 42,
              "lastError": null,
              "services": 3,
              "servers": 3,
              "serversUp": 0,
              "serversDown": 0,
              "serversUnknown": 0,
              "sysctls": [],
              "warnings": [],
              "announcer": "",
              "announcerState": null,
              "announcerHealthy": false,
              "announcerDetail": null,
              "announcerStateSeconds": null,
              "announcerRestarts": 0,
              "vips": [],
              "nodeDrained": false,
              "compatibility": "",
              "servicesNotByMerlin": null,
              "serversNotByMerlin": null,
              "orphanedServers": 0,
              "tables": []
            }

            """;
        Assert.Equal(0, run.ExitCode);
        Assert.Equal(expected.ReplaceLineEndings("\n"), run.Out.ReplaceLineEndings("\n"));
    }

    [Fact]
    public async Task Output_UnknownFormat_IsUsageError()
    {
        var run = await Meradm.RunAsync("list", "--output", "yaml");

        run.AssertUsageError("--output: \"yaml\" is not table or json");
    }
}
