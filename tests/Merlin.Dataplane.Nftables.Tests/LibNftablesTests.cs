using System.Text;
using Merlin.Dataplane.Nftables.Kernel;
using Merlin.Dataplane.Nftables.Layout;
using Merlin.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Merlin.Dataplane.Nftables.Tests;

/// <summary>The in-process writer (libnftables) and its fallback, against the real kernel in namespaces each test makes and deletes.</summary>
public class LibNftablesTests
{
    private static NftablesOptions Options(TestNamespace ns) => Given.Options() with { NetworkNamespace = ns.Name };

    private static NftLib Lib(TestNamespace ns)
    {
        var writer = NftKernel.Open(Options(ns), new ProcessRunner(ns.Name, "ip"), NullLogger.Instance);
        return Assert.IsType<NftLib>(writer);
    }

    private static NftScript Script(params string[] lines)
    {
        var script = new NftScript();
        foreach (var line in lines) script.Tables.AppendLine(line);
        return script;
    }

    [Fact]
    public async Task RefusedScript_SaysWhatNftSaid_WithTheOffendingLine()
    {
        using var ns = TestNamespace.Empty("refused");
        using var nft = Lib(ns);

        var missing = await Assert.ThrowsAsync<NftException>(() => nft.RunAsync(Script(
            "add table netdev merlin",
            "delete element netdev merlin nosuch { 3 }"), CancellationToken.None));
        var syntax = await Assert.ThrowsAsync<NftException>(() => nft.RunAsync("add table netdev merlin\nadd chain netdev merlin c\nadd rule netdev merlin c foo bar\n", CancellationToken.None));

        Assert.StartsWith("line 2:", missing.Message, StringComparison.Ordinal);
        Assert.Contains("Error: ", missing.Message, StringComparison.Ordinal);
        Assert.Contains("No such file or directory", missing.Message, StringComparison.Ordinal);
        Assert.Contains(" | delete element netdev merlin nosuch { 3 }", missing.Message, StringComparison.Ordinal);
        Assert.StartsWith("line 3:", syntax.Message, StringComparison.Ordinal);
        Assert.Contains(" | add rule netdev merlin c foo bar", syntax.Message, StringComparison.Ordinal);
        // Refused as a whole: the table of the first line was not created either.
        Assert.DoesNotContain("merlin", ns.Nft("list", "tables"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Run_ProgramsTheConfiguredNamespace_NotTheRootOne()
    {
        var table = $"mnfttest{Environment.ProcessId}x{Random.Shared.Next(1_000_000)}";
        using var ns = TestNamespace.WithInterface();
        using var nft = Lib(ns);

        // fwd names an interface: nft resolves it where it runs, so it must run inside the namespace.
        await nft.RunAsync(Script(
            $"add table netdev {table}",
            $"add chain netdev {table} c {{ type filter hook ingress device \"eth0\" priority 0; }}",
            $"add rule netdev {table} c fwd to \"peer0\"",
            $"add set netdev {table} s {{ type ipv4_addr; }}",
            $"add element netdev {table} s {{ 198.18.0.1, 198.18.0.2 }}"), CancellationToken.None);

        Assert.Contains($"table netdev {table}", ns.Nft("list", "tables"), StringComparison.Ordinal);
        Assert.DoesNotContain(table, TestNamespace.Host("nft", "list", "tables"), StringComparison.Ordinal);
        var json = await nft.ListSetJsonAsync("set", "netdev", table, "s", CancellationToken.None);
        Assert.Equal(["198.18.0.1", "198.18.0.2"], NftJson.Elements(json!).Select(e => e.Element).Order(StringComparer.Ordinal));
        Assert.Null(await nft.ListSetJsonAsync("set", "netdev", table, "nosuch", CancellationToken.None));
        Assert.Equal(ns.Generation(), await nft.GenerationAsync(CancellationToken.None));

        // Many runs later (enough for the runtime to start its tiered compiler's thread, and pool
        // threads for the continuations), no thread of ours is left inside the namespace.
        for (var i = 0; i < 60; i++) await nft.RunAsync(Script($"add element netdev {table} s {{ 198.18.1.{i} }}"), CancellationToken.None);
        Assert.Empty(ThreadsIn(Inode(Path.Combine("/run/netns", ns.Name))));
        Assert.NotEmpty(ThreadsIn(Inode("/proc/self/ns/net")));   // the check itself sees namespaces
    }

    private static List<string> ThreadsIn(ulong inode) => Directory.GetDirectories("/proc/self/task").Where(t =>
    {
        try { return File.ResolveLinkTarget(Path.Combine(t, "ns", "net"), false)?.FullName.EndsWith($"net:[{inode}]", StringComparison.Ordinal) == true; }
        catch (IOException) { return false; }   // a thread that just ended
    }).ToList();

    private static ulong Inode(string path) => ulong.Parse(TestNamespace.Host("stat", "-L", "-c", "%i", path).Trim(), System.Globalization.CultureInfo.InvariantCulture);

    [Fact]
    public async Task KeptContext_SeesChangesMadeByOthersBetweenRuns()
    {
        using var ns = TestNamespace.Empty("kept");
        using var nft = Lib(ns);
        await nft.RunAsync(Script("add table inet t", "add set inet t s { type ipv4_addr; }", "add element inet t s { 198.18.0.1 }"), CancellationToken.None);

        // Someone else replaces the set with one of another type; our next run must not use its cached view.
        ns.NftScript("delete set inet t s\nadd set inet t s { type inet_service; }\n");
        await nft.RunAsync(Script("add element inet t s { 8080 }"), CancellationToken.None);
        await Assert.ThrowsAsync<NftException>(() => nft.RunAsync(Script("add element inet t s { 198.18.0.2 }"), CancellationToken.None));

        Assert.Equal(["8080"], NftJson.Elements(ns.Nft("-j", "list", "set", "inet", "t", "s")).Select(e => e.Element));
        nft.Dispose();   // the kept context and socket closed; the next run opens them again
        await nft.RunAsync(Script("add element inet t s { 8081 }"), CancellationToken.None);
        Assert.Equal(2, NftJson.Elements(ns.Nft("-j", "list", "set", "inet", "t", "s")).Count);
    }

    [Fact]
    public async Task ANamespaceMadeAgainUnderItsName_IsTheOneProgrammed()
    {
        using var ns = TestNamespace.Empty("renewed");
        using var nft = Lib(ns);
        // Several transactions, so that the old namespace's generation is not what the new one's will be.
        for (var i = 0; i < 5; i++) await nft.RunAsync(Script($"add table inet before{i}"), CancellationToken.None);
        var old = await nft.GenerationAsync(CancellationToken.None);

        // Deleted and made again within the kept context's and socket's linger (1 s).
        TestNamespace.Host("ip", "netns", "delete", ns.Name);
        TestNamespace.Host("ip", "netns", "add", ns.Name);
        await nft.RunAsync(Script("add table inet after"), CancellationToken.None);

        var tables = ns.Nft("list", "tables");
        Assert.Contains("table inet after", tables, StringComparison.Ordinal);
        Assert.DoesNotContain("before", tables, StringComparison.Ordinal);
        Assert.NotEqual(old, ns.Generation());
        Assert.Equal(ns.Generation(), await nft.GenerationAsync(CancellationToken.None));
    }

    [Fact]
    public async Task ScriptCutShort_IsNotCommittedUpToTheCut()
    {
        using var ns = TestNamespace.Empty("cut");
        using var nft = Lib(ns);
        static IReadOnlyDictionary<int, string> NoLines(IReadOnlySet<int> _) => new Dictionary<int, string>();

        var failed = await Assert.ThrowsAsync<InvalidOperationException>(() => nft.RunAsync(stream =>
        {
            stream.Write("add table inet cut1\n"u8);
            stream.Flush();
            throw new InvalidOperationException("rendering failed");
        }, NoLines, CancellationToken.None));
        using var cancel = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => nft.RunAsync(stream =>
        {
            stream.Write("add table inet cut2\n"u8);
            cancel.Cancel();
            // A large element list after the cancellation: the writer stops at its next write.
            for (var i = 0; i < 10_000; i++) stream.Write(Encoding.ASCII.GetBytes($"add table inet cut2_{i}\n"));
        }, NoLines, cancel.Token));

        Assert.Equal("rendering failed", failed.Message);
        Assert.Equal("", ns.Nft("list", "tables").Trim());
        // The writer still works afterwards.
        await nft.RunAsync(Script("add table inet after"), CancellationToken.None);
        Assert.Contains("table inet after", ns.Nft("list", "tables"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task LargeScript_AndManyRuns_LeaveNoDescriptorOpen()
    {
        using var ns = TestNamespace.Empty("large");
        using var nft = Lib(ns);
        var lines = new List<string> { "add table inet big", "add map inet big m { type inet_service : ipv4_addr; size 70000; }" };
        for (var start = 0; start < 65_000; start += 1_000)
            lines.Add($"add element inet big m {{ {string.Join(", ", Enumerable.Range(start, 1_000).Select(p => $"{p} : 198.18.{p / 256 % 256}.{p % 256}"))} }}");
        var descriptors = Directory.GetFiles("/proc/self/fd").Length;

        await nft.RunAsync(Script([.. lines]), CancellationToken.None);   // ~1.5 MiB: freed with its context after the run
        for (var i = 0; i < 100; i++) await nft.RunAsync(Script($"add element inet big m {{ {65_000 + i} : 198.18.0.1 }}"), CancellationToken.None);

        Assert.Equal(65_100, NftJson.Elements(ns.Nft("-j", "list", "map", "inet", "big", "m")).Count);
        // A script file per run would be 100 more; a kept netlink socket or two, and whatever tests
        // running meanwhile hold, are far fewer.
        Assert.InRange(Directory.GetFiles("/proc/self/fd").Length, 0, descriptors + 50);
    }

    [Fact]
    public void ErrorLocations_GetTheLineNumberAndTheLine()
    {
        var error = "/dev/fd/42:2:20-30: Error: Could not process rule: No such file or directory\n\n/dev/fd/42:5:1-3: Error: syntax error\n";
        var asked = new List<int>();

        var quoted = NftLib.Quote(error, wanted =>
        {
            asked.AddRange(wanted);
            return new Dictionary<int, string> { [2] = "delete element netdev merlin d1 { 3 }", [5] = "foo" };
        });

        Assert.Equal([2, 5], asked.Order());
        // A line nft quoted itself (it could reopen the file) is not quoted twice.
        Assert.Equal("line 3:1-3: Error: syntax error | add rule x", NftKernel.Summarize(NftLib.Quote(
            "/dev/fd/7:3:1-3: Error: syntax error\nadd rule x\n^^^\n", _ => throw new InvalidOperationException("nothing to look up"))));
        Assert.Equal("line 2:20-30: Error: Could not process rule: No such file or directory | delete element netdev merlin d1 { 3 } | line 5:1-3: Error: syntax error | foo",
            NftKernel.Summarize(quoted));
    }

    [Fact]
    public async Task WithoutTheLibrary_TheCliWrites_AndTheLogSaysWhy()
    {
        using var ns = TestNamespace.Empty("fallback");
        using var logs = new ListLoggerFactory();
        var options = Options(ns) with { LibNftables = "libnftables-merlin-test-missing.so.9" };

        using var missing = NftKernel.Open(options, new ProcessRunner(ns.Name, "ip"), logs.CreateLogger("test"));
        using var none = NftKernel.Open(options with { LibNftables = null }, new ProcessRunner(ns.Name, "ip"), NullLogger.Instance);
        using var lib = NftKernel.Open(Options(ns), new ProcessRunner(ns.Name, "ip"), logs.CreateLogger("test"));

        Assert.IsType<NftCli>(missing);
        Assert.IsType<NftCli>(none);
        Assert.IsType<NftLib>(lib);
        Assert.Contains(logs.Lines, l => l.Contains("libnftables-merlin-test-missing.so.9 cannot be loaded", StringComparison.Ordinal) && l.Contains("the nft CLI (nft)", StringComparison.Ordinal));
        Assert.Contains(logs.Lines, l => l.Contains("transactions through libnftables.so.1 (in-process)", StringComparison.Ordinal));
        await missing.RunAsync(Script("add table inet viacli"), CancellationToken.None);
        Assert.Contains("table inet viacli", ns.Nft("list", "tables"), StringComparison.Ordinal);
        var refused = await Assert.ThrowsAsync<NftException>(() => missing.RunAsync(Script("delete table inet nosuch"), CancellationToken.None));
        Assert.Contains("No such file or directory", refused.Message, StringComparison.Ordinal);
    }
}
