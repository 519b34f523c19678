using CsCheck;
using Merlin.Reconciler;

namespace Merlin.Reconciler.Tests;

/// <summary>
/// The <c>none</c> dataplane's read is a snapshot it keeps up to date one service at a time; it must always equal a
/// full copy of its table, and a snapshot already handed out must never change.
/// </summary>
public class InMemoryDataplaneTests
{
    [Fact]
    public void TheKeptSnapshot_AlwaysEqualsAFullCopyOfTheTable_AndOldSnapshotsNeverChange()
    {
        Generators.Operation.Array[1, 60].Sample(operations =>
        {
            var dataplane = new InMemoryDataplane();
            var reference = new ServiceTable();
            var handedOut = new List<(DataplaneState Snapshot, DataplaneState Copy)>();
            foreach (var op in operations)
            {
                var before = dataplane.State;
                bool valid;
                try { reference.Apply(op); valid = true; }
                catch (InvalidOperationException) { valid = false; }
                if (valid) dataplane.ApplyAsync(op, CancellationToken.None).GetAwaiter().GetResult();
                else Assert.Throws<DataplaneException>(() => dataplane.ApplyAsync(op, CancellationToken.None).GetAwaiter().GetResult());

                var read = dataplane.ReadAsync(CancellationToken.None).GetAwaiter().GetResult();
                Assert.True(read.SameAs(reference.ToState()), $"after {op}: the snapshot differs from the table");
                // A refused operation changed nothing: the same instance, so the reconciler sees nothing new.
                if (!valid) Assert.Same(before, read);
                handedOut.Add((read, new ServiceTable(read).ToState()));
            }
            foreach (var (snapshot, copy) in handedOut) Assert.True(snapshot.SameAs(copy), "a snapshot handed out earlier changed");
        }, iter: 300);
    }

    [Fact]
    public async Task ReadsWithNothingAppliedBetween_ReturnTheSameInstance_ATamperANewOne()
    {
        var dataplane = new InMemoryDataplane();
        var key = Model.ServiceKey.ForAddress(System.Net.IPAddress.Parse("198.18.0.10"), 80, Model.Protocol.Tcp);
        await dataplane.ApplyAsync(new AddService(key, new Model.ServiceConfig { Scheduler = "mh" }), CancellationToken.None);
        var first = await dataplane.ReadAsync(CancellationToken.None);
        Assert.Same(first, await dataplane.ReadAsync(CancellationToken.None));

        dataplane.Tamper(new DeleteService(key));
        var second = await dataplane.ReadAsync(CancellationToken.None);
        Assert.NotSame(first, second);
        Assert.Empty(second.Services);
        Assert.Single(first.Services);
    }
}
