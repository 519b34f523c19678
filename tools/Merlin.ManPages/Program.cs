using System.Reflection;
using Merlin.Agent;
using Merlin.Cli;
using Merlin.Kubernetes;
using Merlin.ManPages;

// merlin-man-pages OUT-DIR REPO-ROOT: writes OUT-DIR/<package>/man/man<N>/<page>.<N> for every program, from the same
// definitions its --help prints (scripts/package compresses and ships them).
if (args.Length != 2)
{
    Console.Error.WriteLine("usage: Merlin.ManPages OUT-DIR REPO-ROOT");
    return 2;
}
var (outDir, repo) = (args[0], args[1]);
var version = typeof(MeradmApp).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()!.InformationalVersion.Split('+')[0];
// The commit's date, not the clock's: the same tree gives the same pages.
var epoch = long.TryParse(Environment.GetEnvironmentVariable("SOURCE_DATE_EPOCH"), out var seconds) ? seconds : DateTimeOffset.UtcNow.ToUnixTimeSeconds();
var date = DateTimeOffset.FromUnixTimeSeconds(epoch).ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture);

void Write(string package, string page, int section, string text)
{
    var dir = Path.Combine(outDir, package, "man", $"man{section}");
    Directory.CreateDirectory(dir);
    File.WriteAllText(Path.Combine(dir, $"{page}.{section}"), text);
}

Write("merlin", "merlin", 8, DaemonPage.Render(File.ReadAllText(Path.Combine(repo, "docs", "operations.md")), version, date));
Write("merlin", "meradm", 1, CommandPage.Render(new MeradmApp(TextWriter.Null, TextWriter.Null).Root, "meradm", 1, version, date,
    [("0", "Done."), ("1", "The call failed: the daemon refused it or could not be reached (the reason on standard error)."), ("2", "The command line was wrong (the reason and how to get help on standard error); nothing was sent.")]));
Write("merlin-agent", "merlin-agent", 8, CommandPage.Render(new AgentCommandLine().Root, "merlin-agent", 8, version, date,
    [("0", "Detached cleanly."), ("1", "A failure after start: a refusal by the API, a state file, a sysctl or an address it cannot set (logged)."), ("2", "The command line or the state directory is wrong, found before the node or the API is touched.")],
    "/etc/merlin/agent.env: the packaged service's flags (MERLIN_AGENT_ARGS). /var/lib/merlin-agent: node.json, what the agent changed on the node, and its lock."));
Write("merlin-k8s", "merlin-k8s", 8, CommandPage.Render(new ControllerCommandLine().Root, "merlin-k8s", 8, version, date,
    [("0", "Stopped by a signal."), ("1", "Lost the leader lease or failed (logged)."), ("2", "The command line was wrong.")],
    "/etc/merlin/k8s.env: the packaged service's flags (MERLIN_K8S_ARGS)."));
return 0;
