using System.Diagnostics;
using Merlin.Lab.Server;

namespace Merlin.Lab;

/// <summary>
/// <c>dotnet run -c Release --project tests/Merlin.Lab -- demo</c> (as root): a lab with two load
/// balancers running the real merlin daemon on one etcd, four web servers and a client; a VIP made with
/// meradm; traffic spread, drained, failed over and scaled out, printed for a person; everything torn down.
/// </summary>
public static class Demo
{
    public static async Task<int> Main(string[] args)
    {
        if (args is not ["demo"])
        {
            Console.Error.WriteLine("usage: Merlin.Lab demo   (as root: builds a lab of network namespaces, runs merlin in it, tears it down)");
            return 2;
        }
        if (!Environment.IsPrivilegedProcess)
        {
            Console.Error.WriteLine("demo: run as root: it creates network namespaces (nothing is changed outside them)");
            return 2;
        }
        foreach (var (tool, package) in new[] { ("ip", "iproute2"), ("nft", "nftables"), ("etcd", "etcd-server"), ("arping", "iputils-arping") })
        {
            if (Merlin.Testing.Requires.FindOnPath(tool) is null)
            {
                Console.Error.WriteLine($"demo: {tool} is missing (apt-get install {package}, or run scripts/setup)");
                return 2;
            }
        }
        using var cancel = new CancellationTokenSource(TimeSpan.FromMinutes(10));
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
        var clock = Stopwatch.StartNew();
        try
        {
            await RunAsync(cancel.Token);
            Console.WriteLine($"\nDone in {clock.Elapsed.TotalSeconds:0} s; the lab is gone (ip netns list shows none of its namespaces).");
            return 0;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"\ndemo failed: {e.Message}");
            return 1;
        }
    }

    private static async Task RunAsync(CancellationToken ct)
    {
        Title("Merlin demo: two load balancers running merlin on one etcd, four web servers, one client");
        await using var lab = await Lab.CreateAsync(new LabOptions { LoadBalancers = 2, RealServers = 4, ExtraHosts = ["etcd"], IPv6 = false }, ct);
        Console.WriteLine($"A lab of network namespaces ({lab.Prefix}*), ready in {lab.SetupTime.TotalSeconds:0.0} s:");
        Console.WriteLine($"  client {lab.Client.Address}   lb1 {lab["lb1"].Address}   lb2 {lab["lb2"].Address}   " +
            $"rs1–rs4 {lab["rs1"].Address}–{lab["rs4"].Address}   etcd {lab["etcd"].Address}   VIP {lab.Vip}");
        await lab.StartServersAsync(ct: ct);
        var (_, etcd) = await LabMerlin.StartEtcdAsync(lab["etcd"], ct);
        Console.WriteLine($"  web servers up on rs1–rs4 (each answers with its name); etcd serving on {etcd}");
        var options = new LabMerlinOptions { EtcdEndpoint = etcd };
        await using var lb1 = await LabMerlin.StartAsync(lab["lb1"], options, ct);
        await using var lb2 = await LabMerlin.StartAsync(lab["lb2"], options, ct);
        Console.WriteLine($"  merlin running on lb1 and lb2: --dataplane nftables --interface eth0 --hash-seed {options.HashSeed} --store-endpoints {etcd}");

        Title("1. Create a virtual service with meradm (on lb1; lb2 learns it from etcd)");
        var vip = $"{lab.Vip}:{Lab.HttpPort}";
        await Show(lb1, "service", "add", "web", "tcp", vip, "-s", "mh", "-b", "mh-port");
        foreach (var rs in new[] { "rs1", "rs2", "rs3" })
            await Show(lb1, "server", "add", "web", $"{lab[rs].Address}:{Lab.HttpPort}", "-w", "1", "-f", "route");
        await Show(lb1, "list");
        await lb1.WaitProgrammedAsync(1, 3, ct: ct);
        await lb2.WaitProgrammedAsync(1, 3, ct: ct);
        await lab.AssignVipAsync(lab["lb1"], ct);
        Console.WriteLine($"Both daemons have programmed the kernel (nftables, direct server return). The VIP {lab.Vip} is on lb1.");

        Title("2. Spread: 300 HTTP requests from the client, each on a new connection");
        var spread = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 300 }, ct);
        Bars(spread);

        Title("3. Drain rs1 (weight 0): its open connections keep working, new ones avoid it");
        // An echo service on :9000 with the same three servers, for long-lived connections (merlin
        // shares one Maglev map between services with the same servers).
        await Show(lb1, quiet: true, "service", "add", "echo", "tcp", $"{lab.Vip}:{Lab.EchoPort}", "-s", "mh", "-b", "mh-port");
        foreach (var rs in new[] { "rs1", "rs2", "rs3" })
            await Show(lb1, quiet: true, "server", "add", "echo", $"{lab[rs].Address}:{Lab.EchoPort}", "-w", "1", "-f", "route");
        await lb1.WaitProgrammedAsync(2, 6, ct: ct);
        await using (var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.EchoPort),
            new LabHoldOptions { Connections = 10, Only = "rs1", Duration = TimeSpan.FromSeconds(4), MaxAttempts = 300 }))
        {
            await hold.WaitConnectedAsync(ct: ct);
            Console.WriteLine("10 long-lived echo connections are open on rs1 (service echo, same three servers on port 9000).");
            await Show(lb1, "server", "edit", "web", $"{lab["rs1"].Address}:{Lab.HttpPort}", "-w", "0");
            await Show(lb1, quiet: false, "server", "edit", "echo", $"{lab["rs1"].Address}:{Lab.EchoPort}", "-w", "0");
            await lb1.WaitProgrammedAsync(2, 6, ct: ct);
            await Task.Delay(500, ct);
            var fresh = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 150 }, ct);
            Console.WriteLine("150 new requests:");
            Bars(fresh);
            var held = await hold.ReportAsync(ct);
            Console.WriteLine($"The 10 connections on rs1: {held.Survived} still answered until they closed (pinned flows on lb1).");
        }
        await Show(lb1, "server", "edit", "web", $"{lab["rs1"].Address}:{Lab.HttpPort}", "-w", "1");
        await Show(lb1, quiet: true, "server", "edit", "echo", $"{lab["rs1"].Address}:{Lab.EchoPort}", "-w", "1");
        await lb1.WaitProgrammedAsync(2, 6, ct: ct);
        await lb2.WaitProgrammedAsync(2, 6, ct: ct);

        Title("4. Failover: the VIP moves from lb1 to lb2 while 20 connections are open");
        await using (var hold = lab.Client.StartHold(lab.VipEndpoint(Lab.EchoPort), new LabHoldOptions { Connections = 20, Duration = TimeSpan.FromSeconds(4) }))
        {
            await hold.WaitConnectedAsync(ct: ct);
            var announced = await lab.AssignVipAsync(lab["lb2"], ct);
            Console.WriteLine($"VIP moved to lb2 (address + gratuitous ARP: {announced}).");
            var held = await hold.ReportAsync(ct);
            Console.WriteLine($"{held.Survived}/20 connections survived: lb2 has no state from lb1, it hashes each flow with the same seed to the same server.");
        }

        Title("5. Scale out: add rs4; the same 1,000 client flows before and after");
        var ports = (First: 41000, Last: 41999);
        var before = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 1000, SourcePorts = ports, Flows = true, Concurrency = 4 }, ct);
        await Show(lb1, "server", "add", "web", $"{lab["rs4"].Address}:{Lab.HttpPort}", "-w", "1", "-f", "route");
        await lb1.WaitProgrammedAsync(2, 7, ct: ct);
        await lb2.WaitProgrammedAsync(2, 7, ct: ct);
        await lab.AssignVipAsync(lab["lb1"], ct);   // lb1 has never seen these flows: what the table says, not a pin
        var after = await lab.Client.HttpAsync(lab.VipEndpoint(), new LabRequestOptions { Count = 1000, SourcePorts = ports, Flows = true, Concurrency = 4 }, ct);
        Bars(after);
        var moved = LabMerlin.CompareFlows(before, after);
        Console.WriteLine($"{moved.Moved} of {moved.Compared} flows changed server ({100.0 * moved.Moved / moved.Compared:0.0}%; the ideal is 25%, Maglev promises at most ~1.2 × that), {moved.ToNew} of them to rs4.");
        Title("Tearing the lab down");
    }

    private static void Title(string text) => Console.WriteLine($"\n== {text}");

    private static Task Show(LabMerlin on, params string[] args) => Show(on, false, args);

    private static async Task Show(LabMerlin on, bool quiet, params string[] args)
    {
        if (!quiet) Console.WriteLine($"{on.Host.Name}$ meradm {string.Join(' ', args)}");
        var r = await on.MeradmAsync(args);
        if (!quiet && r.StandardOutput.Trim().Length > 0) Console.WriteLine(r.StandardOutput.TrimEnd());
    }

    private static void Bars(RequestReport report)
    {
        var total = Math.Max(1, report.Successes);
        foreach (var (server, count) in report.PerServer)
            Console.WriteLine($"  {server,-4} {new string('█', (int)Math.Round(40.0 * count / total)),-40} {count,4} ({100.0 * count / total:0}%)");
        if (report.Failures > 0) Console.WriteLine($"  failed {report.Failures}: {string.Join(", ", report.Errors.Select(e => $"{e.Key} {e.Value}"))}");
    }
}
