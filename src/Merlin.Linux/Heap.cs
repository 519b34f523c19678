namespace Merlin.Linux;

/// <summary>The C heap (glibc's malloc), which native libraries in the process use.</summary>
public static class Heap
{
    /// <summary>Returns free heap memory to the kernel (malloc_trim(0)): a large native parse leaves its freed memory in the heap.</summary>
    public static void Trim() => Libc.MallocTrim(0);
}
