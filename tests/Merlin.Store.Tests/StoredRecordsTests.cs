using Merlin.Store.Protobuf;
using Merlin.Contracts;
using static Merlin.Store.Tests.Records;

namespace Merlin.Store.Tests;

/// <summary>
/// The stores' codec: the bytes a store keeps are the wire contract's protobuf, as a Go merlin writes and reads them,
/// and a record read is written back byte for byte, fields this Merlin does not know included. Readers get the model,
/// leniently where a record the API would refuse today must keep working.
/// </summary>
public sealed class StoredRecordsTests
{
    /// <summary>
    /// Pinned encodings (what the Go merlin writes for the same records): service web, tcp 198.18.0.1:80, rr;
    /// its server 198.18.1.1:8080, weight 1, ROUTE, an empty health check.
    /// </summary>
    internal const string GoService = "0a0377656212100a0a3139382e31382e302e31105018011a040a027272";

    internal const string GoServer = "0a03776562120f0a0a3139382e31382e312e3110903f1a060a02080110012200";

    /// <summary>The same server with a field this Merlin does not know (number 9, varint 7), as a newer writer might add.</summary>
    internal const string GoServerWithUnknownField = GoServer + "4807";

    internal static RealServer PlainServer() => new()
    {
        ServiceID = "web",
        Key = new RealServer.Types.Key { Ip = "198.18.1.1", Port = 8080 },
        Config = new RealServer.Types.Config { Weight = 1, Forward = ForwardMethod.Route },
        HealthCheck = new RealServer.Types.HealthCheck(),
    };

    [Fact]
    public void Records_EncodeToTheGoMerlinsBytes()
    {
        Assert.Equal(GoService, Convert.ToHexStringLower(StoredRecords.Encode(StoredRecords.Of(Service("web", "198.18.0.1", 80)))));
        Assert.Equal(GoServer, Convert.ToHexStringLower(StoredRecords.Encode(StoredRecords.Of(PlainServer()))));
    }

    [Theory]
    [InlineData(GoService)]
    [InlineData(GoServer)]
    [InlineData(GoServerWithUnknownField)]
    public void ARecordRead_IsWrittenBackByteForByte(string hex)
    {
        var bytes = Convert.FromHexString(hex);
        var encoded = hex == GoService
            ? StoredRecords.Encode(StoredRecords.DecodeService(bytes))
            : StoredRecords.Encode(StoredRecords.DecodeServer(bytes));
        Assert.Equal(hex, Convert.ToHexStringLower(encoded));
    }

    [Fact]
    public void ARecord_DecodesToTheModel_WithoutAProblem()
    {
        var service = StoredRecords.DecodeService(Convert.FromHexString(GoService));
        var server = StoredRecords.DecodeServer(Convert.FromHexString(GoServerWithUnknownField));

        Assert.Equal("web", service.Id);
        Assert.Null(service.Problem);
        Assert.Equal("tcp:198.18.0.1:80", service.Service!.Key.ToString());
        Assert.Equal("rr", service.Service.Config.Scheduler);
        Assert.Equal(("web", "198.18.1.1:8080"), (server.ServiceId, server.Endpoint));
        Assert.Null(server.Problem);
        Assert.Equal(1u, server.Server!.Config.Weight);
        Assert.Equal(Model.ForwardMethod.Route, server.Server.Config.Forward);
    }

    [Fact]
    public void AFlagItsSchedulerDoesNotUse_IsSetAsideAndSaid_TheRecordKeepsIt()
    {
        // The Go merlin passed any flag to the kernel; the API refuses this one today.
        var wire = Service("web", "198.18.0.1", 80, scheduler: "rr");
        wire.Config.Flags.Add("flag-1");
        var stored = StoredRecords.Of(wire);

        Assert.NotNull(stored.Service);
        Assert.Equal(Model.SchedulerFlags.None, stored.Service.Config.Flags);
        Assert.StartsWith("config.flags: ", stored.Problem);
        Assert.EndsWith("(that flag is ignored; the service is programmed)", stored.Problem);
        Assert.Equal(["flag-1"], StoredRecords.Message(stored).Config.Flags);
    }

    [Fact]
    public void AHealthCheckOutsideTodaysBounds_IsProgrammedAtTheNearestBound_AndSaid()
    {
        var wire = PlainServer();
        wire.HealthCheck = new RealServer.Types.HealthCheck
        {
            Endpoint = "http://:8080/health", UpThreshold = 1, DownThreshold = 1,
            Period = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromMilliseconds(50)),
            Timeout = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromMilliseconds(20)),
        };
        var stored = StoredRecords.Of(wire);

        Assert.Equal(Model.Validation.MinHealthPeriod, stored.Server!.HealthCheck.Period);
        Assert.Contains("the server is programmed", stored.Problem);
    }

    [Fact]
    public void ARecordThatCannotBeProgrammed_HasNoModel_AndSaysWhyNamingTheField()
    {
        var stored = StoredRecords.Of(Service("web", "198.18.0.1", 80, scheduler: "bogus"));

        Assert.Null(stored.Service);
        Assert.StartsWith("config.scheduler: ", stored.Problem);
    }

    [Fact]
    public void WrittenByMerlin_OnlyWithAMarkOverTheCurrentContent()
    {
        var go = StoredRecords.DecodeServer(Convert.FromHexString(GoServer));
        var marked = StoredRecords.Of(RecordDigest.Stamped(PlainServer()));
        var editedAfterTheMark = RecordDigest.Stamped(PlainServer());
        editedAfterTheMark.Config.Weight = 2;

        Assert.False(go.WrittenByMerlin);
        Assert.True(marked.WrittenByMerlin);
        Assert.False(StoredRecords.Of(editedAfterTheMark).WrittenByMerlin);
    }

    [Fact]
    public void ARecordNotMadeByTheCodec_IsRefusedByName()
    {
        var e = Assert.Throws<ArgumentException>(() => StoredRecords.Encode(new ForeignService()));
        Assert.Contains(nameof(ForeignService), e.Message);
    }

    private sealed class ForeignService : StoredService
    {
        public override string Id => "x";
        public override Model.VirtualService? Service => null;
        public override string? Problem => null;
        public override bool WrittenByMerlin => false;
    }
}
