using Merlin.Announcer.Vrrp;

namespace Merlin.Announcer.Tests;

public class NotifyLineTests
{
    [Theory]
    [InlineData("INSTANCE \"merlin_51\" MASTER 150", "INSTANCE", "merlin_51", "MASTER", 150, AnnouncerRole.Master)]
    [InlineData("INSTANCE \"merlin_51\" BACKUP 100\n", "INSTANCE", "merlin_51", "BACKUP", 100, AnnouncerRole.Backup)]
    [InlineData("INSTANCE \"merlin_51\" FAULT 0", "INSTANCE", "merlin_51", "FAULT", 0, AnnouncerRole.Fault)]
    [InlineData("INSTANCE \"merlin_51\" STOP 150", "INSTANCE", "merlin_51", "STOP", 150, AnnouncerRole.Stopped)]
    [InlineData("INSTANCE \"with space\" MASTER 7", "INSTANCE", "with space", "MASTER", 7, AnnouncerRole.Master)]
    [InlineData("INSTANCE merlin_51 BACKUP 100", "INSTANCE", "merlin_51", "BACKUP", 100, AnnouncerRole.Backup)]
    [InlineData("INSTANCE \"merlin_51\" MASTER_PRIORITY 254", "INSTANCE", "merlin_51", "MASTER_PRIORITY", 254, AnnouncerRole.Master)]
    [InlineData("INSTANCE \"merlin_51\" BACKUP_PRIORITY 149", "INSTANCE", "merlin_51", "BACKUP_PRIORITY", 149, AnnouncerRole.Backup)]
    public void Parse_InstanceLines(string line, string kind, string name, string state, int priority, AnnouncerRole role)
    {
        var parsed = NotifyLine.Parse(line);

        Assert.NotNull(parsed);
        Assert.Equal(new NotifyLine(kind, name, state, priority), parsed);
        Assert.Equal(role, parsed.Role);
    }

    [Fact]
    public void Parse_GroupLineWithoutPriority()
    {
        Assert.Equal(new NotifyLine("GROUP", "g1", "MASTER", null), NotifyLine.Parse("GROUP \"g1\" MASTER"));
    }

    [Fact]
    public void Parse_UnknownState_HasNoRole()
    {
        Assert.Null(NotifyLine.Parse("INSTANCE \"merlin_51\" DELETED 150")!.Role);
        Assert.Null(NotifyLine.Parse("INSTANCE \"merlin_51\" MASTER_RX_LOWER_PRI 150")!.Role);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData("INSTANCE")]
    [InlineData("INSTANCE \"unterminated MASTER 100")]
    [InlineData("INSTANCE \"x\"")]
    [InlineData("INSTANCE \"x\" MASTER high")]
    [InlineData("INSTANCE \"x\" MASTER 100 extra")]
    [InlineData("INSTANCE \"\" MASTER 100")]
    [InlineData("INSTANCE \"x\" MASTER -1")]
    public void Parse_Malformed_IsNull(string? line)
    {
        Assert.Null(NotifyLine.Parse(line));
    }
}
