namespace Merlin.Daemon.Tests;

public class DaemonOptionsTests
{
    private static DaemonOptions Parse(params string[] args) =>
        DaemonOptions.From(DaemonOptions.BuildConfiguration(args, new Dictionary<string, string?>()));

    [Fact]
    public void From_OriginalFlagNames_AreUnderstood()
    {
        var o = Parse("--port", "5000", "--health-port", "5001", "--store-backend", "etcd3", "--store-endpoints", "http://a:2379,http://b:2379",
            "--store-prefix", "/lb", "--reconcile-sync-period", "1m");
        Assert.Equal((5000, 5001, "etcd3", "/lb"), (o.Port, o.HealthPort, o.StoreBackend, o.StorePrefix));
        Assert.Equal(["http://a:2379", "http://b:2379"], o.StoreEndpoints);
        Assert.Equal(TimeSpan.FromMinutes(1), o.SyncPeriod);
    }

    [Fact]
    public void From_EnvironmentFillsWhatFlagsLeaveOut_FlagsWin()
    {
        var env = new Dictionary<string, string?> { ["MERLIN_STORE_BACKEND"] = "etcd3", ["MERLIN_PORT"] = "6000" };
        var o = DaemonOptions.From(DaemonOptions.BuildConfiguration(["--port", "7000"], env));
        Assert.Equal(("etcd3", 7000), (o.StoreBackend, o.Port));
    }

    [Fact]
    public void From_Nftables_TakesInterfaceAndSeed()
    {
        var o = Parse("--dataplane", "nftables", "--interface", "eth0", "--hash-seed", "0x5eed1234");
        Assert.Equal(("nftables", "eth0", 0x5eed1234u), (o.DataplaneKind, o.Interface, o.HashSeed));
    }

    [Theory]
    [InlineData(new[] { "--dataplane", "nftables" }, "--hash-seed: required")]
    [InlineData(new[] { "--dataplane", "nftables", "--hash-seed", "xyz" }, "--hash-seed:")]
    [InlineData(new[] { "--dataplane", "ipvs2" }, "--dataplane: \"ipvs2\" is not one of none, ipvs, nftables, auto")]
    [InlineData(new[] { "--port", "http" }, "--port: \"http\" is not a port")]
    [InlineData(new[] { "--reconcile-sync-period", "10" }, "--reconcile-sync-period:")]
    [InlineData(new[] { "--store-backend", "redis" }, "--store-backend: \"redis\"")]
    [InlineData(new[] { "--bogus", "1" }, "--bogus: unknown flag")]
    [InlineData(new[] { "--store-backend", "" }, "--store-backend: \"\" is not one of sqlite, etcd3, etcd")]
    [InlineData(new[] { "--port", "" }, "--port: \"\" is not a port")]
    [InlineData(new[] { "--store-path", "" }, "--store-path: empty")]
    [InlineData(new[] { "--store-path", "/" }, "--store-path: / is a directory")]
    public void From_BadValue_NamesTheFlag(string[] args, string expected)
    {
        var e = Assert.Throws<OptionsException>(() => Parse(args));
        Assert.Contains(expected, e.Message);
    }
    [Fact]
    public void From_Default_IsTheStaticAnnouncer()
    {
        var o = Parse();
        Assert.Equal(("static", null), (o.AnnouncerMode, o.Vrrp));
    }

    [Fact]
    public void From_Vrrp_BuildsTheKeepalivedInstance_WithRepeatedPeers()
    {
        var o = Parse("--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "51", "--vrrp-priority", "150",
            "--vrrp-peer", "198.18.0.12", "--vrrp-peer=198.18.0.13", "--management-vip", "198.18.0.9", "--vrrp-preempt",
            "--vrrp-advert-interval", "500ms", "--vrrp-start-window", "90s", "--state-dir", "/var/lib/merlin-test");

        var v = Assert.IsType<Merlin.Announcer.Vrrp.VrrpOptions>(o.Vrrp);
        Assert.Equal(TimeSpan.FromSeconds(90), v.StartWindow);
        Assert.Equal(("eth0", 51, 150, true, "198.18.0.9"), (v.Interface, v.RouterId, v.Priority, v.Preempt, v.ManagementVip.ToString()));
        Assert.Equal(["198.18.0.12", "198.18.0.13"], v.Peers.Select(p => p.ToString()));
        Assert.Equal(TimeSpan.FromMilliseconds(500), v.AdvertInterval);
        Assert.Equal("/var/lib/merlin-test/keepalived", v.StateDir);
    }

    [Fact]
    public void From_Vrrp_Defaults_NoPreemptPriority100OneSecond_AndVrrpInterfaceOverridesInterface()
    {
        var v = Parse("--announcer", "vrrp", "--interface", "eth0", "--vrrp-interface", "bond0", "--vrrp-router-id", "7",
            "--vrrp-peer", "10.0.0.2,10.0.0.3", "--management-vip", "10.0.0.100").Vrrp!;
        Assert.Equal(("bond0", 100, false, TimeSpan.FromSeconds(1), 2), (v.Interface, v.Priority, v.Preempt, v.AdvertInterval, v.Peers.Count));
        Assert.Equal(TimeSpan.FromSeconds(60), v.StartWindow);
    }

    [Theory]
    [InlineData(new[] { "--announcer", "ospf" }, "--announcer: \"ospf\" is not one of static, vrrp, bgp")]
    [InlineData(new[] { "--vrrp-peer", "10.0.0.2" }, "--vrrp-peer: only with --announcer vrrp")]
    [InlineData(new[] { "--management-vip", "10.0.0.100" }, "--management-vip: only with --announcer vrrp")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-peer", "10.0.0.2", "--management-vip", "10.0.0.100" }, "--vrrp-router-id: required")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "7", "--vrrp-peer", "10.0.0.2" }, "--management-vip: required")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "7", "--management-vip", "10.0.0.100" }, "--vrrp-peer: at least one peer")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "7", "--vrrp-peer", "peer1", "--management-vip", "10.0.0.100" }, "--vrrp-peer: \"peer1\" is not an IP address")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "300", "--vrrp-peer", "10.0.0.2", "--management-vip", "10.0.0.100" }, "--vrrp-router-id: 300")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "7", "--vrrp-priority", "255", "--vrrp-peer", "10.0.0.2", "--management-vip", "10.0.0.100" }, "--vrrp-priority: 255")]
    [InlineData(new[] { "--announcer", "vrrp", "--vrrp-router-id", "7", "--vrrp-peer", "10.0.0.2", "--management-vip", "10.0.0.100" }, "--vrrp-interface:")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "7", "--vrrp-peer", "10.0.0.2", "--management-vip", "10.0.0.100", "--vrrp-advert-interval", "5ms" }, "--vrrp-advert-interval:")]
    [InlineData(new[] { "--announcer", "vrrp", "--interface", "eth0", "--vrrp-router-id", "7", "--vrrp-peer", "2001:db8::2", "--management-vip", "10.0.0.100" }, "--vrrp-peer: 2001:db8::2 is not of the management VIP's family")]
    public void From_BadVrrpSettings_NameTheFlag(string[] args, string expected)
    {
        var e = Assert.Throws<OptionsException>(() => Parse(args));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void From_Bgp_ReadsEveryFlag_RepeatedPeersAndLocalAddressesByFamily()
    {
        var o = Parse("--announcer", "bgp", "--bgp-asn", "64513", "--bgp-router-id", "198.18.0.11", "--bgp-peer", "198.18.0.1:64512",
            "--bgp-peer", "[2001:db8::1]:64512", "--bgp-local-address", "198.18.0.11", "--bgp-local-address", "2001:db8::11",
            "--bgp-hold-time", "30s", "--bgp-store-grace", "45s", "--gobgpd", "/opt/gobgpd", "--state-dir", "/var/lib/merlin-test");
        var b = Assert.IsType<Merlin.Announcer.Bgp.BgpOptions>(o.Bgp);
        Assert.Equal((64513u, "198.18.0.11", "198.18.0.11", "2001:db8::11", TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(10), "/opt/gobgpd"),
            (b.LocalAsn, b.RouterId.ToString(), b.LocalAddress?.ToString(), b.LocalAddress6?.ToString(), b.HoldTime, b.Keepalive, b.Gobgpd));
        Assert.Equal(["198.18.0.1 AS64512", "2001:db8::1 AS64512"], b.Peers.Select(p => p.ToString()));
        Assert.Equal("/var/lib/merlin-test/gobgpd", b.StateDir);
        Assert.Equal(TimeSpan.FromSeconds(45), o.StoreGrace);
        Assert.Null(o.Vrrp);
    }

    [Fact]
    public void From_Bgp_Defaults_Hold9sGrace120s_AndOtherAnnouncersHaveNoGrace()
    {
        var o = Parse("--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:65001");
        Assert.Equal((TimeSpan.FromSeconds(9), TimeSpan.FromSeconds(3), "gobgpd"), (o.Bgp!.HoldTime, o.Bgp.Keepalive, o.Bgp.Gobgpd));
        Assert.Equal(TimeSpan.FromSeconds(120), o.StoreGrace);
        Assert.Null(Parse().StoreGrace);
    }

    [Theory]
    [InlineData(new[] { "--bgp-peer", "10.0.0.254:65001" }, "--bgp-peer: only with --announcer bgp")]
    [InlineData(new[] { "--bgp-store-grace", "10s" }, "--bgp-store-grace: only with --announcer bgp")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:65001" }, "--bgp-asn: required")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "0", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:65001" }, "--bgp-asn: \"0\" is not an AS number")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-peer", "10.0.0.254:65001" }, "--bgp-router-id: required")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "2001:db8::1", "--bgp-peer", "10.0.0.254:65001" }, "--bgp-router-id: 2001:db8::1 is not a router id")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1" }, "--bgp-peer: at least one peer")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254" }, "--bgp-peer: \"10.0.0.254\" is not ADDRESS:ASN")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "2001:db8::1:65001" }, "--bgp-peer: \"2001:db8::1:65001\": write an IPv6 peer in brackets")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "router:65001" }, "--bgp-peer: \"router\" is not an IP address")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:as1" }, "--bgp-peer: \"as1\" is not an AS number")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:1", "--bgp-peer", "10.0.0.254:2" }, "--bgp-peer: a peer is given twice")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:1", "--bgp-hold-time", "2s" }, "--bgp-hold-time: 2s is not a BGP hold time")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:1", "--bgp-local-address", "10.0.0.1,10.0.0.2" }, "--bgp-local-address: at most one IPv4 address")]
    [InlineData(new[] { "--announcer", "bgp", "--bgp-asn", "65000", "--bgp-router-id", "10.0.0.1", "--bgp-peer", "10.0.0.254:1", "--bgp-store-grace", "0s" }, "--bgp-store-grace: must be positive")]
    public void From_BadBgpSettings_NameTheFlag(string[] args, string expected)
    {
        var e = Assert.Throws<OptionsException>(() => Parse(args));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void SecondChanceWindow_Is1hByDefault_ReadFromItsFlag_AndOutOfRangeIsRefusedNamingTheFlag()
    {
        Assert.Equal(TimeSpan.FromHours(1), Parse().SecondChanceWindow);
        Assert.Equal(TimeSpan.FromMinutes(90), Parse("--second-chance-window", "90m").SecondChanceWindow);
        Assert.Equal("--second-chance-window: must be positive", Assert.Throws<OptionsException>(() => Parse("--second-chance-window", "0s")).Message);
        Assert.Equal("--second-chance-window: 800h is not between 1s and 720h", Assert.Throws<OptionsException>(() => Parse("--second-chance-window", "800h")).Message);
    }

    [Fact]
    public void HealthKeepAlive_IsOnByDefault_AndCanBeTurnedOff()
    {
        Assert.True(Parse().HealthKeepAlive);
        Assert.False(Parse("--health-keepalive", "false").HealthKeepAlive);
        Assert.Contains("--health-keepalive: \"sometimes\" is not true or false", Assert.Throws<OptionsException>(() => Parse("--health-keepalive=sometimes")).Message);
        Assert.Contains("\"sometimes\": unexpected argument", Assert.Throws<OptionsException>(() => Parse("--health-keepalive", "sometimes")).Message);
        Assert.Contains("\"eth0\": unexpected argument", Assert.Throws<OptionsException>(() => Parse("--manage-sysctls", "eth0")).Message);
    }

    [Fact]
    public void From_StateDirThatIsOrIsUnderAFile_IsRefusedNamingTheFlag()
    {
        using var dir = new Merlin.Testing.TempDir("state");
        var file = dir.File("file");
        File.WriteAllText(file, "");

        Assert.Equal($"--state-dir: {file} is a file, not a directory", Assert.Throws<OptionsException>(() => Parse("--state-dir", file)).Message);
        Assert.Equal($"--state-dir: {file}/sub cannot be made: {file} is a file", Assert.Throws<OptionsException>(() => Parse("--state-dir", file + "/sub")).Message);
        Assert.StartsWith("--state-dir: empty", Assert.Throws<OptionsException>(() => Parse("--state-dir", " ")).Message);
        Assert.Equal(dir.File("new/deeper"), Parse("--state-dir", dir.File("new/deeper")).StateDir); // made when first needed
    }

    [Fact]
    public void Help_ListsEveryFlag_WithItsDefaultAndMeaning()
    {
        var commandLine = new DaemonCommandLine();
        var output = new StringWriter();
        Assert.True(commandLine.IsHelpOrVersion(["--help"], out var help));
        Assert.Equal(0, help.Invoke(new System.CommandLine.InvocationConfiguration { Output = output }));

        var lines = output.ToString().Split('\n');
        foreach (var flag in commandLine.Flags)
            Assert.Contains(lines, l => l.TrimStart().StartsWith(flag.Name + " ", StringComparison.Ordinal) && l.Trim().Length > flag.Name.Length + 20);
        Assert.Contains(lines, l => l.Contains("--port <port>") && l.Contains("[default: 4282]"));
        Assert.Contains(lines, l => l.Contains("--health-keepalive") && l.Contains("[default: on]"));
        Assert.Contains(lines, l => l.Contains("--manage-sysctls") && l.Contains("[default: off]"));
        Assert.Contains(lines, l => l.Contains("--reconcile-sync-period <duration>") && l.Contains("[default: 30s]"));
    }

    [Fact]
    public void From_AFlagGivenTwice_TheLastCounts_AndAFlagWithoutItsValueIsNamed()
    {
        Assert.Equal(5001, Parse("--port", "5000", "--port=5001").Port);
        Assert.Equal("--port: needs a value", Assert.Throws<OptionsException>(() => Parse("--port")).Message);
        Assert.Equal("\"eth0\": unexpected argument (flags are --name value or --name=value)",
            Assert.Throws<OptionsException>(() => Parse("eth0")).Message);
    }

    [Fact]
    public void From_ConfigFile_IsUnderTheEnvironmentAndTheFlags()
    {
        using var dir = new Merlin.Testing.TempDir("config");
        var file = dir.File("merlin.json");
        File.WriteAllText(file, "// comments as in the packaged file\n{ \"port\": 5000, \"health-port\": 5001, \"store-prefix\": \"/file\" }");
        var env = new Dictionary<string, string?> { ["MERLIN_HEALTH_PORT"] = "6001", ["MERLIN_STORE_PREFIX"] = "/env" };

        var o = DaemonOptions.From(DaemonOptions.BuildConfiguration(["--config", file, "--store-prefix", "/flag"], env));

        Assert.Equal((5000, 6001, "/flag"), (o.Port, o.HealthPort, o.StorePrefix));
    }

    [Fact]
    public void Sections_AreTheFlagsByConcern_AndAHostBuiltFromBadOptionsStopsNamingTheFlag()
    {
        var o = Parse("--port", "5000", "--store-backend", "etcd3", "--dataplane", "nftables", "--hash-seed", "0x1", "--health-keepalive=false");
        Assert.Equal((5000, "etcd3", "nftables", 1u, false), (o.Api.Port, o.Store.Backend, o.Dataplane.Kind, o.Dataplane.HashSeed, o.Health.KeepAlive));

        using var state = new Merlin.Testing.TempDir("sections");
        var bad = new DaemonOptions { Port = Merlin.Testing.LocalPorts.Free(), HealthPort = Merlin.Testing.LocalPorts.Free(), StateDir = state.Path,
            StorePath = state.File("merlin.db"), TlsCert = state.File("cert.pem") };
        Assert.Equal("--tls-key: required with --tls-cert", Assert.Throws<OptionsException>(() => DaemonHost.Build(bad)).Message);
        Assert.False(File.Exists(state.File("merlin.db")), "the store was opened");
    }
}
