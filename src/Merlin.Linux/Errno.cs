namespace Merlin.Linux;

/// <summary>Linux errno numbers (asm-generic, shared by x86-64 and arm64) and their symbolic names.</summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int ESRCH = 3;
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int EINVAL = 22;
    public const int ENFILE = 23;
    public const int EMFILE = 24;
    public const int EPIPE = 32;
    public const int ERANGE = 34;
    public const int EMSGSIZE = 90;
    public const int EPROTONOSUPPORT = 93;
    public const int EOPNOTSUPP = 95;
    public const int EAFNOSUPPORT = 97;
    public const int EADDRINUSE = 98;
    public const int EADDRNOTAVAIL = 99;
    public const int ENETDOWN = 100;
    public const int ENETUNREACH = 101;
    public const int ECONNABORTED = 103;
    public const int ECONNRESET = 104;
    public const int ENOBUFS = 105;
    public const int ETIMEDOUT = 110;
    public const int ECONNREFUSED = 111;
    public const int EHOSTUNREACH = 113;
    public const int EINPROGRESS = 115;

    private static readonly string?[] Names = BuildNames();

    /// <summary>"EEXIST" for 17; "errno 200" for a number without a name.</summary>
    public static string Name(int errno) =>
        (uint)errno < (uint)Names.Length && Names[errno] is { } name ? name : $"errno {errno}";

    private static string?[] BuildNames()
    {
        const string table =
            "EPERM 1 ENOENT 2 ESRCH 3 EINTR 4 EIO 5 ENXIO 6 E2BIG 7 ENOEXEC 8 EBADF 9 ECHILD 10 EAGAIN 11 " +
            "ENOMEM 12 EACCES 13 EFAULT 14 ENOTBLK 15 EBUSY 16 EEXIST 17 EXDEV 18 ENODEV 19 ENOTDIR 20 " +
            "EISDIR 21 EINVAL 22 ENFILE 23 EMFILE 24 ENOTTY 25 ETXTBSY 26 EFBIG 27 ENOSPC 28 ESPIPE 29 EROFS " +
            "30 EMLINK 31 EPIPE 32 EDOM 33 ERANGE 34 EDEADLK 35 ENAMETOOLONG 36 ENOLCK 37 ENOSYS 38 " +
            "ENOTEMPTY 39 ELOOP 40 ENOMSG 42 EIDRM 43 ECHRNG 44 EL2NSYNC 45 EL3HLT 46 EL3RST 47 ELNRNG 48 " +
            "EUNATCH 49 ENOCSI 50 EL2HLT 51 EBADE 52 EBADR 53 EXFULL 54 ENOANO 55 EBADRQC 56 EBADSLT 57 " +
            "EBFONT 59 ENOSTR 60 ENODATA 61 ETIME 62 ENOSR 63 ENONET 64 ENOPKG 65 EREMOTE 66 ENOLINK 67 EADV " +
            "68 ESRMNT 69 ECOMM 70 EPROTO 71 EMULTIHOP 72 EDOTDOT 73 EBADMSG 74 EOVERFLOW 75 ENOTUNIQ 76 " +
            "EBADFD 77 EREMCHG 78 ELIBACC 79 ELIBBAD 80 ELIBSCN 81 ELIBMAX 82 ELIBEXEC 83 EILSEQ 84 ERESTART " +
            "85 ESTRPIPE 86 EUSERS 87 ENOTSOCK 88 EDESTADDRREQ 89 EMSGSIZE 90 EPROTOTYPE 91 ENOPROTOOPT 92 " +
            "EPROTONOSUPPORT 93 ESOCKTNOSUPPORT 94 EOPNOTSUPP 95 EPFNOSUPPORT 96 EAFNOSUPPORT 97 EADDRINUSE " +
            "98 EADDRNOTAVAIL 99 ENETDOWN 100 ENETUNREACH 101 ENETRESET 102 ECONNABORTED 103 ECONNRESET 104 " +
            "ENOBUFS 105 EISCONN 106 ENOTCONN 107 ESHUTDOWN 108 ETOOMANYREFS 109 ETIMEDOUT 110 ECONNREFUSED " +
            "111 EHOSTDOWN 112 EHOSTUNREACH 113 EALREADY 114 EINPROGRESS 115 ESTALE 116 EUCLEAN 117 ENOTNAM " +
            "118 ENAVAIL 119 EISNAM 120 EREMOTEIO 121 EDQUOT 122 ENOMEDIUM 123 EMEDIUMTYPE 124 ECANCELED 125 " +
            "ENOKEY 126 EKEYEXPIRED 127 EKEYREVOKED 128 EKEYREJECTED 129 EOWNERDEAD 130 ENOTRECOVERABLE 131 " +
            "ERFKILL 132 EHWPOISON 133";
        var parts = table.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var names = new string?[134];
        for (var i = 0; i + 1 < parts.Length; i += 2) names[int.Parse(parts[i + 1], System.Globalization.CultureInfo.InvariantCulture)] = parts[i];
        return names;
    }
}
