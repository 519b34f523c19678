using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Merlin.Cli.Output;

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true, UseStringEnumConverter = true)]
[JsonSerializable(typeof(ServiceList))]
[JsonSerializable(typeof(StatusView))]
[JsonSerializable(typeof(Merlin.Hashing.SimulationReport))]
[JsonSerializable(typeof(Merlin.Hashing.ChangeSimulationReport))]
internal sealed partial class CliJsonContext : JsonSerializerContext;

/// <summary><c>--output json</c>: the view records, camelCase, every field present (null when it does not apply).</summary>
public static class Json
{
    private static readonly JsonSerializerOptions Options = new(CliJsonContext.Default.Options)
    {
        // Readable health endpoints and errors ("http://:8080/health", not "\u002B" escapes); this is not HTML.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    public static void Write(TextWriter writer, ServiceList list) =>
        writer.WriteLine(JsonSerializer.Serialize(list, Options.GetTypeInfo(typeof(ServiceList))));

    public static void Write(TextWriter writer, StatusView status) =>
        writer.WriteLine(JsonSerializer.Serialize(status, Options.GetTypeInfo(typeof(StatusView))));

    public static void Write(TextWriter writer, Merlin.Hashing.ChangeSimulationReport report) =>
        writer.WriteLine(JsonSerializer.Serialize(report, Options.GetTypeInfo(typeof(Merlin.Hashing.ChangeSimulationReport))));

    public static void Write(TextWriter writer, Merlin.Hashing.SimulationReport report) =>
        writer.WriteLine(JsonSerializer.Serialize(report, Options.GetTypeInfo(typeof(Merlin.Hashing.SimulationReport))));
}
