using System.CommandLine;
using System.CommandLine.Parsing;

namespace Merlin.Cli.Parsing;

internal static class GivenExtensions
{
    // An option with a custom parser gets an implicit result even when absent, so "was it on the
    // command line" is a non-implicit result, never just a non-null one.

    public static bool IsGiven(this ParseResult result, Option option) => result.GetResult(option) is { Implicit: false };

    public static bool IsGiven(this SymbolResult result, Option option) => result.GetResult(option) is { Implicit: false };
}
