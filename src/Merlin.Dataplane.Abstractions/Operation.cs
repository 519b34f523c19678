using Merlin.Model;

namespace Merlin.Dataplane.Abstractions;

/// <summary>One change to a dataplane. The planner emits them in an order that is safe to apply one by one.</summary>
public abstract record Operation(ServiceKey Service);

public sealed record AddService(ServiceKey Service, ServiceConfig Config) : Operation(Service)
{
    public override string ToString() => $"add service {Service} ({Config.Scheduler})";
}

public sealed record UpdateService(ServiceKey Service, ServiceConfig Config) : Operation(Service)
{
    public override string ToString() => $"update service {Service} ({Config.Scheduler})";
}

public sealed record DeleteService(ServiceKey Service) : Operation(Service)
{
    public override string ToString() => $"delete service {Service}";
}

public sealed record AddServer(ServiceKey Service, RealServerKey Server, RealServerConfig Config) : Operation(Service)
{
    public override string ToString() => $"add server {Server} to {Service} (weight {Config.Weight}, {Config.Forward})";
}

public sealed record UpdateServer(ServiceKey Service, RealServerKey Server, RealServerConfig Config) : Operation(Service)
{
    public override string ToString() => $"update server {Server} of {Service} (weight {Config.Weight}, {Config.Forward})";
}

public sealed record DeleteServer(ServiceKey Service, RealServerKey Server) : Operation(Service)
{
    public override string ToString() => $"delete server {Server} from {Service}";
}
