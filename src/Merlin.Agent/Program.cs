using System.CommandLine;
using System.Runtime.InteropServices;
using Merlin.Agent;
using Merlin.Client;
using Merlin.Hosting;
using Merlin.Linux;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MerlinClient = Merlin.Contracts.Merlin.MerlinClient;

// Exit codes: 0 detached cleanly, 1 a failure (the reason is logged), 2 the command line was wrong.
var commandLine = new AgentCommandLine();
var (parsed, exit) = await HostCommandLine.ParseAsync(commandLine.Root, "merlin-agent", args);
if (exit is { } code) return code;

AgentInvocation? invocation;
string? error;
try
{
    invocation = commandLine.Bind(parsed, out error);
}
catch (ConnectionSetupException e) // an unreadable --token-file
{
    (invocation, error) = (null, e.Message);
}
if (invocation is null)
{
    Console.Error.WriteLine($"merlin-agent: {error}");
    return 2;
}

// The settings as IOptions sections (AgentSections), each checked by its validators (ValidateOnStart) before the node
// or the API is touched; the command line has run the same rules, so this only fails if the two parted.
var secondChanceSection = invocation.Agent.SecondChanceSeed is { } seed ? new SecondChanceOptions(seed) : null;
await using var sections = new ServiceCollection().AddAgentSections(invocation.Agent, secondChanceSection).BuildServiceProvider();
try
{
    AgentSections.ValidateOnStart(sections);
}
catch (OptionsValidationException e)
{
    Console.Error.WriteLine($"merlin-agent: {e.Failures.First()}");
    return 2;
}
var options = sections.GetRequiredService<IOptions<AgentOptions>>().Value;
var secondChanceOptions = secondChanceSection is null ? null : sections.GetRequiredService<IOptions<SecondChanceOptions>>().Value;

// One agent per node and state directory, before the node or the API is touched: two would each record the other's
// changes as the operator's and undo them at detach.
var stateDir = Path.GetDirectoryName(invocation.StateFile)!;
ProcessLock nodeLock;
try
{
    nodeLock = ProcessLock.Take(stateDir, "merlin-agent");
}
catch (ProcessLockHeldException e)
{
    Console.Error.WriteLine($"merlin-agent: --state-dir: {stateDir} is in use by another merlin-agent{(e.HolderPid is { } pid ? $" (PID {pid})" : "")}; one agent per node");
    return 2;
}
catch (Exception e) when (e is IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"merlin-agent: --state-dir: {stateDir} cannot be used: {e.Message}");
    return 2;
}
using var heldLock = nodeLock;

using var logs = LoggerFactory.Create(b =>
{
    if (invocation.LogFormat == "json") b.AddJsonConsole(o => o.TimestampFormat = "O");
    else b.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ "; o.UseUtcTimestamp = true; });
});
var log = logs.CreateLogger("Merlin.Agent");

// The first SIGTERM/SIGINT starts the detach; a second one cuts its drain wait short.
using var stop = new CancellationTokenSource();
using var hurry = new CancellationTokenSource();
void OnSignal(PosixSignalContext context)
{
    context.Cancel = true;
    if (!stop.IsCancellationRequested) stop.Cancel();
    else hurry.Cancel();
}
using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);

using var channel = GrpcConnection.CreateChannel(invocation.Connection);
var agent = new RealServerAgent(
    new MerlinClient(channel),
    new NodeAttachment(new LinuxNodeNetwork(), invocation.StateFile),
    options,
    TimeProvider.System,
    logs.CreateLogger<RealServerAgent>());
log.LogInformation("merlin-agent: API {Api}, services {Services}, drain period {Drain}, state {State}",
    invocation.Connection.Authority, string.Join(", ", options.Services), Merlin.Model.Durations.Format(options.DrainPeriod), invocation.StateFile);
// Second chance runs beside the agent's life and outlives its drain: the rules go when the node has detached.
using var secondChanceStop = new CancellationTokenSource();
using var nft = secondChanceOptions is null ? null : new Merlin.Dataplane.Nftables.NftablesScripts(null, log);
var chance = nft is null ? null : new SecondChanceAgent(
    new MerlinClient(channel), new NftablesSecondChanceKernel(nft), options,
    secondChanceOptions!, TimeProvider.System, logs.CreateLogger<SecondChanceAgent>());
using var metrics = options.MetricsAddress is { } metricsAddress
    ? new AgentMetrics(metricsAddress, () => chance?.Counters ?? new Dictionary<(string, string), ulong>())
    : null;
var secondChance = chance?.RunAsync(secondChanceStop.Token) ?? Task.CompletedTask;
try
{
    await agent.RunAsync(stop.Token, hurry.Token);
    return 0;
}
catch (Exception e) when (e is AgentConfigurationException or NodeNetworkException or ConnectionSetupException or Grpc.Core.RpcException
                           or IOException or UnauthorizedAccessException) // e.g. the state file cannot be written
{
    log.LogError("{Error}", e.Message);
    return 1;
}
finally
{
    await secondChanceStop.CancelAsync();
    await secondChance;
}
