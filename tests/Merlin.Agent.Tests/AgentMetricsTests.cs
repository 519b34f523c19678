using System.Net;
using Merlin.Testing;

namespace Merlin.Agent.Tests;

/// <summary>
/// merlin-agent's /metrics (<c>--metrics-address</c>) as a dashboard reads it: the second-chance family keeps the
/// name, type and labels it had before the agent moved to the one metrics API, and follows the kernel's counters.
/// </summary>
public sealed class AgentMetricsTests
{
    private CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task SecondChancePackets_AreOneCounterFamily_WithServiceAndKind_FollowingTheKernel()
    {
        var counters = new Dictionary<(string Service, string Kind), ulong> { [("web", "handed")] = 3, [("web", "refused")] = 1 };
        var port = LocalPorts.Free();
        using var metrics = new AgentMetrics(new IPEndPoint(IPAddress.Loopback, port), () => counters);
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(5) };

        var scrape = await http.GetStringAsync("/metrics", Ct);
        Assert.Equal("merlin_agent_second_chance_packets_total counter service,kind",
            PrometheusText.Describe(PrometheusText.Families(scrape).Where(f => f.Key.StartsWith("merlin_", StringComparison.Ordinal))));
        Assert.Contains("merlin_agent_second_chance_packets_total{service=\"web\",kind=\"handed\"} 3", scrape);

        counters[("web", "handed")] = 5;
        scrape = await http.GetStringAsync("/metrics", Ct);
        Assert.Contains("merlin_agent_second_chance_packets_total{service=\"web\",kind=\"handed\"} 5", scrape);
        Assert.Contains("merlin_agent_second_chance_packets_total{service=\"web\",kind=\"refused\"} 1", scrape);
    }
}
