using System.Net;
using System.Net.Sockets;

namespace Merlin.Testing;

/// <summary>Places on this machine a test or bench needs: a free loopback port, the repository's root.</summary>
public static class LocalPorts
{
    /// <summary>A TCP port free on 127.0.0.1 now (another process may take it before it is bound: bind and retry).</summary>
    public static int Free()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

public static class Repository
{
    /// <summary>The folder holding Merlin.slnx, found by walking up from the running binaries.</summary>
    public static string Root
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Merlin.slnx"))) return dir.FullName;
            throw new InvalidOperationException("Merlin.slnx not found above " + AppContext.BaseDirectory);
        }
    }
}
