using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using Merlin.Lab;
using Merlin.Lab.Server;
using Merlin.Testing;
using TheLab = Merlin.Lab.Lab;

namespace Merlin.Agent.Tests;

/// <summary>
/// Issue 17's lab goals on a BGP fleet: a router (BIRD, ECMP with an L3+L4 hash) over lb1–lb3, each the real
/// merlin daemon (nftables DSR, one etcd, one hash seed) with gobgpd; real servers attached by merlin-agent.
/// Second chance off and on run side by side on the same events: VIP 1 carries the "off" services, whose agents
/// have no <c>--hash-seed</c>, VIP 2 the "on" services, whose agents have it — same servers, same md-table
/// history, so one drain, join or node stop is met by both at once, and no reset is needed between them.
/// Each scenario holds 30 echo connections per VIP and runs a bounded HTTP request loop per VIP while it
/// changes the servers and then stops (or restarts) a load-balancer node, so the router re-hashes flows onto
/// nodes that have no pin for them and look them up in the changed table.
/// </summary>
public sealed class SecondChanceFleetLabTests
{
    private const int Connections = 30;
    private const string OffEcho = "off-echo", OffWeb = "off-web", OnEcho = "on-echo", OnWeb = "on-web";
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(4);
    // API calls wait for etcd: generous, since the lab shares its cores with everything else the suite runs.
    private const string CallTimeout = "30s";
    // Bounds of the waits for processes and propagation: generous for the same reason; a healthy run takes a few seconds each.
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    [Fact]
    public async Task Fleet_DrainJoinAndNodeRestart_SecondChanceKeepsEveryConnection()
    {
        TheLab.Require();
        Requires.Etcd();
        Requires.Command("nft", "apt-get install nftables");
        Requires.Command("gobgpd", "apt-get install gobgpd");
        Requires.Command("bird", "apt-get install bird2");
        var clock = Stopwatch.StartNew();
        // rs1–rs4 serve from the start; rs5 joins in scenario 2, rs6 in scenario 3.
        await using var lab = await TheLab.CreateAsync(new LabOptions
        {
            LoadBalancers = 3, RealServers = 6, Router = true, ExtraHosts = ["etcd"], IPv6 = false, VipCount = 2, VipsOnRealServers = false,
        }, Ct);
        await using var fleet = new Fleet(lab);
        try
        {
            await fleet.StartAsync();
            Output($"fleet up after {clock.Elapsed.TotalSeconds:0.0} s");

            // 1. Drain the busiest real server, then stop lb1.
            var s1 = await fleet.RunAsync("1: drain a server, then stop lb1", async f =>
            {
                var drained = await f.BusiestServerAsync(f.Serving);
                await f.ChangeAsync(() => f.DrainAsync(drained), drained, present: false);
                await f.StopNodeAsync(f.Lab["lb1"]);
                return $"drained {drained.Name}";
            });
            await fleet.ResetAfterDrainAsync("lb1");

            // 2. Add rs5, then stop lb1.
            var s2 = await fleet.RunAsync("2: add a server, then stop lb1", async f =>
            {
                var added = f.Lab["rs5"];
                await f.ChangeAsync(() => f.AddAsync(added), added, present: true);
                await f.StopNodeAsync(f.Lab["lb1"]);
                return $"added {added.Name}";
            });
            await fleet.RestartNodeAsync("lb1");

            // 3. Restart lb2 while the busiest server drains and rs6 joins.
            var s3 = await fleet.RunAsync("3: restart lb2 while a server drains and another joins", async f =>
            {
                var drained = await f.BusiestServerAsync(f.Serving);
                var added = f.Lab["rs6"];
                await f.ChangeAsync(() => Task.WhenAll(f.DrainAsync(drained), f.AddAsync(added)), added, present: true, drained);
                await f.StopNodeAsync(f.Lab["lb2"]);
                await Task.Delay(Settle, Ct);
                await f.StartNodeAsync("lb2");
                return $"drained {drained.Name}, added {added.Name}";
            });

            Output($"scenarios done after {clock.Elapsed.TotalSeconds:0.0} s");
            foreach (var s in new[] { s1, s2, s3 })
            {
                // Second chance on: every connection, every request — the goal. Scenario 2 used to lose one or two in some
                // runs: the node was stopped before every agent had the last tables (ChangeAsync waits for them now).
                // Scenario 3 used to lose one in some runs, with refused hand-offs: by then most slots had moved within
                // the window, and the addition took back slots the drain had just given away (TableRecordTests,
                // TheFleetLabsWholeHistory_…); such slots are now the last a server frees.
                Assert.True(s.On.Hold.Survived == Connections, $"scenario {s.Name}, second chance on: {s.On.Describe()}");
                Assert.True(s.On.Requests.Failures == 0, $"scenario {s.Name}, second chance on: {s.On.Requests.Failures} request(s) failed: {Errors(s.On.Requests)}");
                // A connection whose packets reached another server was handed back: the counters saw it.
                if (s.On.AtRisk.Count > 0)
                    Assert.True(s.Handed > 0, $"scenario {s.Name}: {s.On.AtRisk.Count} connection(s) reached another server, but no agent handed a packet on");
                // Off: exactly the connections whose packets reached another server reset. This is deterministic (a
                // server without the socket answers with a reset), unlike how many that are: it depends on which
                // flows the router's hash moves, so "off lost some" is reported, not asserted.
                Assert.True(s.Off.Failed.SetEquals(s.Off.AtRisk),
                    $"scenario {s.Name}, second chance off: failed [{string.Join(", ", s.Off.Failed)}], reached another server [{string.Join(", ", s.Off.AtRisk)}]");
            }

            // 4. Cost: the same request loop through the real servers with their rules, with conntrack alone, with neither, in turn.
            await fleet.MeasureCostAsync(rounds: 5, requests: 300);
            Output($"done after {clock.Elapsed.TotalSeconds:0.0} s");
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"{e}\n{await fleet.DescribeAsync()}");
        }
    }

    private static string Tail(string s, int max = 5000) => s.Length <= max ? s : "…" + s[^max..];

    private static string Errors(RequestReport r) =>
        string.Join(", ", r.Errors.Select(e => $"{e.Key} {e.Value}")) + "; first: " + string.Join(", ", r.FirstFailures.Take(5).Select(f => $"#{f.Request} at {f.AtMs} ms {f.Error}"));

    /// <summary>What one VIP (second chance off or on) went through in a scenario.</summary>
    private sealed record Side(HoldReport Hold, RequestReport Requests, IReadOnlySet<int> AtRisk)
    {
        /// <summary>Local ports of the connections that did not survive.</summary>
        public IReadOnlySet<int> Failed => Hold.Connections.Where(c => !c.Survived).Select(c => c.LocalPort).ToHashSet();

        public string Describe() =>
            $"{Hold.Survived}/{Hold.Requested} connections survived ({AtRisk.Count} reached another server), " +
            $"requests {Requests.Successes}/{Requests.Completed} ok";
    }

    private sealed record ScenarioResult(string Name, Side Off, Side On, long Handed, long Accepted, long Refused);

    /// <summary>The lab's fleet and the agents, and the steps the scenarios are made of.</summary>
    private sealed class Fleet(TheLab lab) : IAsyncDisposable
    {
        private readonly TestPki _pki = new("Merlin Fleet CA");
        private readonly Dictionary<string, LabMerlin> _daemons = [];
        private readonly Dictionary<string, (LabProcess Off, LabProcess On)> _agents = [];
        private readonly List<LabHost> _drained = [];
        private LabBird _bird = null!;
        private string _etcd = "";
        // Pins left by earlier scenarios' connections (they live 300 s): not this scenario's.
        private HashSet<(IPAddress Vip, int ClientPort, int Port)> _stale = [];

        public TheLab Lab => lab;

        private IPAddress VipOff => lab.VipsV4[0];

        private IPAddress VipOn => lab.VipsV4[1];

        /// <summary>Real servers with agents that are not drained.</summary>
        public IEnumerable<LabHost> Serving => _agents.Keys.Select(n => lab[n]).Where(h => !_drained.Contains(h));

        private IEnumerable<LabHost> Nodes => new[] { "lb1", "lb2", "lb3" }.Select(n => lab[n]);

        private IEnumerable<LabMerlin> Running => _daemons.Values.Where(d => !d.Process.HasExited);

        public async Task StartAsync()
        {
            await lab.StartServersAsync(ct: Ct);
            (_, _etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], Ct);
            _bird = await LabBird.StartAsync(lab, Ct);
            await Task.WhenAll(Nodes.Select(n => StartNodeAsync(n.Name, waitRoute: false)));
            var lb1 = _daemons["lb1"];
            foreach (var (id, vip, port) in new[] { (OffEcho, VipOff, TheLab.EchoPort), (OffWeb, VipOff, TheLab.HttpPort), (OnEcho, VipOn, TheLab.EchoPort), (OnWeb, VipOn, TheLab.HttpPort) })
                await lb1.MeradmAsync("service", "add", id, "tcp", $"{vip}:{port}", "-s", "mh", "-b", "mh-port,md-table", "--timeout", CallTimeout);
            await Task.WhenAll(new[] { "rs1", "rs2", "rs3", "rs4" }.Select(n => StartAgentsAsync(lab[n])));
            foreach (var d in _daemons.Values) await d.WaitProgrammedAsync(4, 16, Patience, Ct);
            await WaitRouteAsync(Nodes);
        }

        /// <summary>
        /// Opens the connections and starts the request loops on both VIPs, runs <paramref name="act"/>, lets the
        /// flows settle and collects what each side saw, with the pins that show which connections reached a server
        /// other than their own.
        /// </summary>
        public async Task<ScenarioResult> RunAsync(string name, Func<Fleet, Task<string>> act)
        {
            var clock = Stopwatch.StartNew();
            var hold = new LabHoldOptions { Connections = Connections, Interval = TimeSpan.FromMilliseconds(200), Duration = TimeSpan.FromSeconds(300), Timeout = TimeSpan.FromSeconds(10) };
            var requests = new LabRequestOptions { Count = 20_000, Duration = TimeSpan.FromSeconds(300), Interval = TimeSpan.FromMilliseconds(20), Timeout = TimeSpan.FromSeconds(10) };
            _stale = (await PinsAsync()).Select(p => p.Key).ToHashSet();
            await using var holdOff = lab.Client.StartHold(new IPEndPoint(VipOff, TheLab.EchoPort), hold);
            await using var holdOn = lab.Client.StartHold(new IPEndPoint(VipOn, TheLab.EchoPort), hold);
            Assert.Equal(Connections, await holdOff.WaitConnectedAsync(ct: Ct));
            Assert.Equal(Connections, await holdOn.WaitConnectedAsync(ct: Ct));
            await using var loopOff = lab.Client.StartHttp(new IPEndPoint(VipOff, TheLab.HttpPort), requests);
            await using var loopOn = lab.Client.StartHttp(new IPEndPoint(VipOn, TheLab.HttpPort), requests);
            var what = await act(this);
            await Task.Delay(Settle, Ct);
            var pins = await PinsAsync();
            var counters = await CountersAsync();
            var (off, on) = (await holdOff.StopAsync(Ct), await holdOn.StopAsync(Ct));
            var (offRequests, onRequests) = (await loopOff.StopAsync(Ct), await loopOn.StopAsync(Ct));
            var result = new ScenarioResult(name,
                new Side(off, offRequests, AtRisk(off, VipOff, pins)), new Side(on, onRequests, AtRisk(on, VipOn, pins)),
                counters.GetValueOrDefault("handed"), counters.GetValueOrDefault("accepted"), counters.GetValueOrDefault("refused"));
            Output($"scenario {name} ({what}; {clock.Elapsed.TotalSeconds:0.0} s):");
            Output($"  second chance off: {result.Off.Describe()}");
            Output($"  second chance on:  {result.On.Describe()}; agents handed {result.Handed}, accepted {result.Accepted}, refused {result.Refused} packet(s)");
            return result;
        }

        /// <summary>The real server (of <paramref name="candidates"/>) the most of this scenario's held connections of both VIPs are pinned to.</summary>
        public async Task<LabHost> BusiestServerAsync(IEnumerable<LabHost> candidates)
        {
            var pins = await PinsAsync();
            var byMac = candidates.ToDictionary(h => h.Mac, StringComparer.OrdinalIgnoreCase);
            var counts = pins.Where(p => p.Key.Port == TheLab.EchoPort && byMac.ContainsKey(p.Value) && !_stale.Contains(p.Key))
                .DistinctBy(p => p.Key).GroupBy(p => p.Value, StringComparer.OrdinalIgnoreCase).ToDictionary(g => g.Key, g => g.Count(), StringComparer.OrdinalIgnoreCase);
            var busiest = byMac.Values.OrderByDescending(h => counts.GetValueOrDefault(h.Mac)).ThenBy(h => h.Name, StringComparer.Ordinal).First();
            Output($"  held connections per server: {string.Join(", ", byMac.Values.Select(h => $"{h.Name} {counts.GetValueOrDefault(h.Mac)}"))}");
            return busiest;
        }

        /// <summary>
        /// Makes a server change and waits until it is everywhere: every running node's tables hold <paramref name="server"/>
        /// (or no longer give it slots) and every "on" agent has rewritten its rules from the new records.
        /// </summary>
        public async Task ChangeAsync(Func<Task> change, LabHost server, bool present, LabHost? alsoGone = null)
        {
            var marks = _agents.ToDictionary(a => a.Key, a => a.Value.On.LineCount);
            await change();
            await Poll.UntilAsync(async () =>
            {
                foreach (var d in Running)
                {
                    var owners = await TableOwnersAsync(d.Host);
                    if (owners.Contains(server.Mac) != present || (alsoGone is not null && owners.Contains(alsoGone.Mac))) return false;
                }
                return true;
            }, $"every node's tables {(present ? "give" : "take")} slots {(present ? "to" : "from")} {server.Name}", Patience, interval: TimeSpan.FromMilliseconds(200), ct: Ct);
            // A drained server's own rules need not change (the slots it gave away name itself as their previous owner);
            // the servers that now own them must have the records every node programs before a flow can need them —
            // the last ones, not a record of a service changed first while the other was still to change.
            HashSet<string> programmed = [];
            var serving = _agents.Where(a => !_drained.Contains(lab[a.Key])).ToList();
            await Poll.UntilAsync(async () =>
            {
                programmed = await ProgrammedHashesAsync();
                return serving.All(a => LastRecords(a.Value.On, marks.GetValueOrDefault(a.Key)) is { Count: > 0 } written && written.IsSubsetOf(programmed));
            }, "every serving agent's second-chance rules are written from the records every node programs", Patience,
                () => $"programmed [{string.Join(", ", programmed)}]; agents: " + string.Join("; ", serving.Select(a => $"{a.Key} [{string.Join(", ", LastRecords(a.Value.On, marks.GetValueOrDefault(a.Key)) ?? [])}]")),
                TimeSpan.FromMilliseconds(200), Ct);
        }

        /// <summary>The md-table hashes the running nodes program, when they all program the same ones; otherwise none.</summary>
        private async Task<HashSet<string>> ProgrammedHashesAsync()
        {
            HashSet<string>? common = null;
            foreach (var d in Running)
            {
                var status = await d.StatusAsync();
                var hashes = status.GetProperty("tables").EnumerateArray().Select(t => t.GetProperty("hash").GetString()!).ToHashSet(StringComparer.Ordinal);
                if (common is null) common = hashes;
                else if (!common.SetEquals(hashes)) return [];
            }
            return common ?? [];
        }

        /// <summary>
        /// The table hashes of the "on" agent's last rules written after line <paramref name="mark"/>
        /// ("… tables on-web 0123…, on-echo 4567…"), or null if it wrote none since.
        /// </summary>
        private static HashSet<string>? LastRecords(LabProcess agent, int mark)
        {
            var line = agent.LinesSince(mark).LastOrDefault(l => l.Contains("Second chance: rules written", StringComparison.Ordinal));
            if (line is null) return null;
            var records = line[(line.IndexOf("tables ", StringComparison.Ordinal) + "tables ".Length)..];
            return records.Split(", ").Select(r => r.Split(' ').Last().Trim()).ToHashSet(StringComparer.Ordinal);
        }

        /// <summary>Drains <paramref name="rs"/> in every service for 10 minutes (longer than the test): weight 0, its connections stay.</summary>
        public async Task DrainAsync(LabHost rs)
        {
            _drained.Add(rs);
            await Task.WhenAll(Services(rs).Select(s => _daemons["lb3"].MeradmAsync("server", "drain", s.Id, s.Endpoint, "--period", "10m", "--timeout", CallTimeout)));
        }

        public Task AddAsync(LabHost rs) => StartAgentsAsync(rs);

        /// <summary>Undrains what scenario 1 drained and brings <paramref name="node"/> back.</summary>
        public async Task ResetAfterDrainAsync(string node)
        {
            var rs = _drained.Single();
            await Task.WhenAll(Services(rs).Select(s => _daemons["lb3"].MeradmAsync("server", "undrain", s.Id, s.Endpoint, "--timeout", CallTimeout)));
            _drained.Clear();
            await RestartNodeAsync(node);
        }

        public async Task RestartNodeAsync(string node)
        {
            var clock = Stopwatch.StartNew();
            await StartNodeAsync(node);
            Output($"  {node} back in the router's route after {clock.Elapsed.TotalSeconds:0.0} s");
        }

        /// <summary>Stops a node's daemon (it withdraws its routes while its dataplane still forwards) and waits until the router routes around it.</summary>
        public async Task StopNodeAsync(LabHost node)
        {
            var d = _daemons[node.Name];
            Assert.Equal(0, await d.Process.StopAsync(TimeSpan.FromSeconds(15)));
            await WaitRouteAsync(Nodes.Where(n => n != node && !_daemons[n.Name].Process.HasExited));
        }

        /// <summary>Starts (or restarts) a node's daemon; waits until it programmed everything and, unless told not to, until the router routes to it.</summary>
        public async Task StartNodeAsync(string name, bool waitRoute = true)
        {
            var node = lab[name];
            if (_daemons.Remove(name, out var old)) await old.DisposeAsync();
            var (cert, key) = _pki.WritePem(_pki.Server(node.Address), $"merlin-{name}");
            _daemons[name] = await LabMerlin.StartAsync(node, new LabMerlinOptions
            {
                EtcdEndpoint = _etcd,
                Tls = new LabMerlinTls(cert, key, _pki.CaFile),
                ExtraArgs =
                [
                    "--announcer", "bgp", "--bgp-asn", LabBird.FleetAsn.ToString(CultureInfo.InvariantCulture), "--bgp-router-id", node.Address.ToString(),
                    "--bgp-peer", $"{lab.Router!.Address}:{LabBird.RouterAsn}",
                ],
            }, Ct);
            if (!waitRoute) return;
            await _daemons[name].WaitProgrammedAsync(4, _agents.Count * 4, Patience, Ct);
            await WaitRouteAsync(Nodes.Where(n => _daemons.TryGetValue(n.Name, out var d) && !d.Process.HasExited));
        }

        /// <summary>
        /// Scenario 4: HTTP request loops on the "on" VIP, rotating through three settings on every real server: its
        /// second-chance tables in place ("rules"); removed, with only conntrack kept on by a one-rule table
        /// ("conntrack": what a real server with any stateful firewall, or kube-proxy, runs anyway); and nothing
        /// ("none"). The rules need conntrack, so "rules" against "conntrack" is the rules' own cost, and against
        /// "none" the whole. The tables are saved with <c>nft list</c>, deleted and loaded back. A measurement:
        /// printed, never asserted.
        /// </summary>
        public async Task MeasureCostAsync(int rounds, int requests)
        {
            var saved = new Dictionary<LabHost, string>();
            foreach (var rs in _agents.Keys.Select(n => lab[n]))
            {
                var text = (await rs.ExecAsync("nft", "list", "table", "ip", "merlin_chance")).StandardOutput;
                saved[rs] = Path.Combine(lab.TempPath, $"chance-{rs.Name}.nft");
                await File.WriteAllTextAsync(saved[rs], text, Ct);
            }
            var conntrackOnly = Path.Combine(lab.TempPath, "conntrack-only.nft");
            await File.WriteAllTextAsync(conntrackOnly,
                "table ip merlin_cost {\n  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n    ct state invalid counter\n  }\n}\n", Ct);
            string[] settings = ["rules", "conntrack", "none"];
            var options = new LabRequestOptions { Count = requests, Timeout = TimeSpan.FromSeconds(3) };
            var all = settings.ToDictionary(s => s, _ => new List<RequestReport>());
            try
            {
                for (var round = 0; round < rounds; round++)
                {
                    foreach (var setting in settings)
                    {
                        foreach (var (rs, file) in saved)
                        {
                            var present = (await rs.RunAsync("nft", "list", "table", "ip", "merlin_chance")).ExitCode == 0;
                            if (setting == "rules" && !present) await rs.ExecAsync("nft", "-f", file);
                            if (setting != "rules" && present) await rs.ExecAsync("nft", "delete", "table", "ip", "merlin_chance");
                            var costTable = (await rs.RunAsync("nft", "list", "table", "ip", "merlin_cost")).ExitCode == 0;
                            if (setting == "conntrack" && !costTable) await rs.ExecAsync("nft", "-f", conntrackOnly);
                            if (setting != "conntrack" && costTable) await rs.ExecAsync("nft", "delete", "table", "ip", "merlin_cost");
                        }
                        var r = await lab.Client.HttpAsync(new IPEndPoint(VipOn, TheLab.HttpPort), options, Ct);
                        all[setting].Add(r);
                        Output($"  cost round {round + 1}, {setting,-9}: p50 {r.P50LatencyMs:0.000} ms, p90 {r.P90LatencyMs:0.000} ms, p99 {r.P99LatencyMs:0.000} ms, mean {r.MeanLatencyMs:0.000} ms ({r.Successes}/{r.Completed} ok)");
                    }
                }
            }
            finally
            {
                // Leave the agents' rules as they wrote them, so their detach removes them.
                foreach (var (rs, file) in saved)
                {
                    if ((await rs.RunAsync("nft", "list", "table", "ip", "merlin_cost")).ExitCode == 0) await rs.ExecAsync("nft", "delete", "table", "ip", "merlin_cost");
                    if ((await rs.RunAsync("nft", "list", "table", "ip", "merlin_chance")).ExitCode != 0) await rs.ExecAsync("nft", "-f", file);
                }
            }
            foreach (var setting in settings)
            {
                var r = all[setting];
                Output($"cost, {setting,-9}: median of rounds p50 {Median(r.Select(x => x.P50LatencyMs)):0.000} ms, p99 {Median(r.Select(x => x.P99LatencyMs)):0.000} ms; {r.Sum(x => x.Failures)} failed");
            }
            var load = (await File.ReadAllTextAsync("/proc/loadavg", Ct)).Trim();
            Output($"load average during the cost rounds (/proc/loadavg): {load}");
        }

        public async Task<string> DescribeAsync()
        {
            var text = new System.Text.StringBuilder();
            try
            {
                text.AppendLine($"--- bird:\n{await _bird.BirdcAsync("show", "protocols")}");
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                text.AppendLine($"--- bird: {e.Message}");
            }
            foreach (var (name, d) in _daemons) text.AppendLine($"--- {name}:\n{Tail(d.Process.Output)}");
            foreach (var (name, (off, on)) in _agents) text.AppendLine($"--- agents on {name}:\n{Tail(off.Output)}\n{Tail(on.Output)}");
            text.AppendLine(await lab.DescribeAsync());
            return text.ToString();
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var (off, on) in _agents.Values)
            {
                await off.DisposeAsync();
                await on.DisposeAsync();
            }
            foreach (var d in _daemons.Values) await d.DisposeAsync();
            if (_bird is not null) await _bird.DisposeAsync();
            _pki.Dispose();
        }

        private IEnumerable<(string Id, string Endpoint)> Services(LabHost rs) =>
            new[] { (OffEcho, TheLab.EchoPort), (OffWeb, TheLab.HttpPort), (OnEcho, TheLab.EchoPort), (OnWeb, TheLab.HttpPort) }
                .Select(s => (s.Item1, $"{rs.Address}:{s.Item2}"));

        /// <summary>Two agents on <paramref name="rs"/>: one for the "off" services without <c>--hash-seed</c>, one for the "on" services with it.</summary>
        private async Task StartAgentsAsync(LabHost rs)
        {
            var off = await StartAgentAsync(rs, "off", [OffWeb, OffEcho], secondChance: false);
            var on = await StartAgentAsync(rs, "on", [OnWeb, OnEcho], secondChance: true);
            _agents[rs.Name] = (off, on);
        }

        private async Task<LabProcess> StartAgentAsync(LabHost rs, string side, string[] services, bool secondChance)
        {
            var (cert, key) = _pki.WritePem(_pki.Client($"agent-{rs.Name}-{side}", "realserver", rs.Address), $"agent-{rs.Name}-{side}");
            var agent = rs.Start([.. LabMerlin.Agent(),
                "--api", $"{lab["lb3"].Address}:{LabMerlin.ApiPort}", "--ca", _pki.CaFile, "--cert", cert, "--key", key,
                .. services.SelectMany(s => new[] { "--service", s }), "--address", rs.Address.ToString(), "--weight", "1",
                "--drain-period", "0s", "--timeout", CallTimeout, "--state-dir", Path.Combine(lab.TempPath, $"agent-{rs.Name}-{side}"),
                .. secondChance ? new[] { "--hash-seed", LabMerlin.DefaultSeed } : []]);
            try
            {
                await agent.WaitForLineAsync(l => l.Contains($"Registered {services.Length} server", StringComparison.Ordinal), Patience, 0, Ct);
            }
            catch
            {
                Output($"agent on {rs.Name} ({side}):\n{agent.Output}");
                await agent.DisposeAsync();
                throw;
            }
            return agent;
        }

        private async Task WaitRouteAsync(IEnumerable<LabHost> hosts)
        {
            var want = hosts.Select(h => h.Address).OrderBy(a => a.ToString(), StringComparer.Ordinal).ToList();
            IReadOnlyList<IPAddress> off = [], on = [];
            await Poll.UntilAsync(async () => (off = await _bird.NextHopsAsync(VipOff)).SequenceEqual(want) && (on = await _bird.NextHopsAsync(VipOn)).SequenceEqual(want),
                $"the router's next hops for both VIPs are [{string.Join(", ", want)}]", Patience,
                () => $"VIP 1: [{string.Join(", ", off)}], VIP 2: [{string.Join(", ", on)}]", TimeSpan.FromMilliseconds(100), Ct);
        }

        /// <summary>MACs that own a slot of any DSR lookup map (<c>dN</c>) on <paramref name="node"/>.</summary>
        private static async Task<HashSet<string>> TableOwnersAsync(LabHost node)
        {
            var json = (await node.ExecAsync("nft", "-j", "list", "table", "netdev", "merlin")).StandardOutput;
            var owners = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            using var doc = JsonDocument.Parse(json);
            foreach (var item in doc.RootElement.GetProperty("nftables").EnumerateArray())
            {
                if (!item.TryGetProperty("map", out var map)) continue;
                var name = map.GetProperty("name").GetString() ?? "";
                if (name.Length < 2 || name[0] != 'd' || !name[1..].All(char.IsAsciiDigit)) continue;
                if (!map.TryGetProperty("elem", out var elems)) continue;
                foreach (var e in elems.EnumerateArray())
                    if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2 && e[1].ValueKind == JsonValueKind.String) owners.Add(e[1].GetString()!);
            }
            return owners;
        }

        /// <summary>Every running node's pinned DSR flows: (VIP, client port, service port) → the real server's MAC, with the node.</summary>
        private async Task<List<KeyValuePair<(IPAddress Vip, int ClientPort, int Port), string>>> PinsAsync()
        {
            var pins = new List<KeyValuePair<(IPAddress, int, int), string>>();
            foreach (var d in Running)
            {
                var json = (await d.Host.ExecAsync("nft", "-j", "list", "map", "netdev", "merlin", "flows4")).StandardOutput;
                using var doc = JsonDocument.Parse(json);
                foreach (var item in doc.RootElement.GetProperty("nftables").EnumerateArray())
                {
                    if (!item.TryGetProperty("map", out var map) || !map.TryGetProperty("elem", out var elems)) continue;
                    foreach (var e in elems.EnumerateArray())
                    {
                        if (e.ValueKind != JsonValueKind.Array || e.GetArrayLength() != 2) continue;
                        var k = e[0];
                        if (k.TryGetProperty("elem", out var inner)) k = inner.GetProperty("val");
                        var concat = k.GetProperty("concat");
                        // saddr . daddr . sport . dport
                        pins.Add(new((IPAddress.Parse(concat[1].GetString()!), concat[2].GetInt32(), concat[3].GetInt32()), e[1].GetString()!));
                    }
                }
            }
            return pins;
        }

        /// <summary>Held connections of <paramref name="vip"/> that some node pinned to a server other than the one they opened on.</summary>
        private IReadOnlySet<int> AtRisk(HoldReport report, IPAddress vip, List<KeyValuePair<(IPAddress Vip, int ClientPort, int Port), string>> pins)
        {
            var macs = lab.RealServers.ToDictionary(h => h.Name, h => h.Mac, StringComparer.Ordinal);
            var byFlow = pins.Where(p => p.Key.Vip.Equals(vip) && p.Key.Port == TheLab.EchoPort).ToLookup(p => p.Key.ClientPort, p => p.Value);
            return report.Connections.Where(c => macs.ContainsKey(c.Server) && byFlow[c.LocalPort].Any(m => !m.Equals(macs[c.Server], StringComparison.OrdinalIgnoreCase)))
                .Select(c => c.LocalPort).ToHashSet();
        }

        /// <summary>The "on" agents' hand-off counters summed over servers and services, since their rules were last written.</summary>
        private async Task<Dictionary<string, long>> CountersAsync()
        {
            var sums = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var rs in _agents.Keys.Select(n => lab[n]))
            {
                var r = await rs.RunAsync("nft", "-j", "list", "counters", "table", "ip", "merlin_chance");
                if (r.ExitCode != 0) continue;
                using var doc = JsonDocument.Parse(r.StandardOutput);
                foreach (var item in doc.RootElement.GetProperty("nftables").EnumerateArray())
                {
                    if (!item.TryGetProperty("counter", out var c)) continue;
                    var name = c.GetProperty("name").GetString() ?? "";
                    var kind = name[..Math.Max(0, name.LastIndexOf('_'))];
                    sums[kind] = sums.GetValueOrDefault(kind) + c.GetProperty("packets").GetInt64();
                }
            }
            return sums;
        }

        private static double Median(IEnumerable<double> values)
        {
            var v = values.Order().ToList();
            return v.Count == 0 ? 0 : v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
        }
    }
}
