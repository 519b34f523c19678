using Merlin.Client;

namespace Merlin.Cli.Tests;

public class ConnectionTests
{
    [Fact]
    public async Task Defaults_Are127001Port4282Timeout10s()
    {
        var before = DateTime.UtcNow;
        var run = await Meradm.RunAsync("status"); // one call (list tries ListStream first)

        var connection = Assert.Single(run.Connections);
        Assert.Equal(new ConnectionOptions("127.0.0.1", 4282, TimeSpan.FromSeconds(10)), connection);
        Assert.Equal(new Uri("http://127.0.0.1:4282"), connection.Address);
        var deadline = Assert.Single(run.Client.Calls).Options.Deadline;
        Assert.NotNull(deadline);
        Assert.InRange(deadline.Value, before.AddSeconds(10), DateTime.UtcNow.AddSeconds(10));
    }

    [Theory]
    [InlineData("lb1", "lb1", 4282, "http://lb1:4282/")]
    [InlineData("lb1.example.net:5000", "lb1.example.net", 5000, "http://lb1.example.net:5000/")]
    [InlineData("198.18.0.1:4300", "198.18.0.1", 4300, "http://198.18.0.1:4300/")]
    [InlineData("::1", "::1", 4282, "http://[::1]:4282/")]
    [InlineData("[2001:db8::5]", "2001:db8::5", 4282, "http://[2001:db8::5]:4282/")]
    [InlineData("[2001:db8::5]:4300", "2001:db8::5", 4300, "http://[2001:db8::5]:4300/")]
    public async Task Host_AcceptsHostOrHostPort(string host, string expectedHost, int expectedPort, string address)
    {
        var run = await Meradm.RunAsync("-H", host, "list");

        var connection = Assert.Single(run.Connections);
        Assert.Equal(expectedHost, connection.Host);
        Assert.Equal(expectedPort, connection.Port);
        Assert.Equal(address, connection.Address.ToString());
    }

    [Fact]
    public async Task GlobalOptions_WorkAfterTheCommandToo()
    {
        var run = await Meradm.RunAsync("server", "del", "web", "10.0.1.1:80", "--host", "lb2", "-P", "4400", "--timeout", "500ms");

        Assert.Equal(new ConnectionOptions("lb2", 4400, TimeSpan.FromMilliseconds(500)), Assert.Single(run.Connections));
    }

    [Fact]
    public async Task Host_WithTheSamePortAsDashP_IsAccepted()
    {
        var run = await Meradm.RunAsync("-H", "lb1:4300", "-P", "4300", "list");

        Assert.Equal(0, run.ExitCode);
        Assert.Equal(4300, Assert.Single(run.Connections).Port);
    }

    [Fact]
    public async Task Host_AndDashP_Disagreeing_IsUsageError()
    {
        var run = await Meradm.RunAsync("-H", "lb1:4300", "-P", "4400", "list");

        run.AssertUsageError("--host gives port 4300 but --port gives 4400");
    }

    [Theory]
    [InlineData("--host", "-H", "lb1:99999", "list")]
    [InlineData("--host", "-H", "[lb1]:80", "list")]
    [InlineData("--host", "-H", "bad host", "list")]
    [InlineData("--host", "-H", "", "list")]
    [InlineData("--port", "-P", "0", "list")]
    [InlineData("--port", "-P", "http", "list")]
    [InlineData("--timeout: \"10\" needs a unit", "--timeout", "10", "list")]
    [InlineData("--timeout: \"10 s\"", "--timeout", "10 s", "list")]
    [InlineData("--timeout: \"0s\" must be longer than zero", "--timeout", "0s", "list")]
    [InlineData("--timeout: \"d\" in \"5d\" is not a unit", "--timeout", "5d", "list")]
    public async Task BadConnectionOptions_AreUsageErrors(string expected, params string[] args)
    {
        var run = await Meradm.RunAsync(args);

        run.AssertUsageError(expected);
    }
}
