namespace Merlin.Model;

public enum Protocol { Tcp = 1, Udp = 2, Sctp = 3 }

public enum IpFamily { V4, V6 }

public enum ForwardMethod { Route = 1, Tunnel = 2, Masq = 3 }

public enum TunnelType { Ipip = 0, Gue = 1, Gre = 2 }

/// <summary>GUE/GRE encapsulation checksum options, as the kernel's IP_VS_TUNNEL_ENCAP_FLAG_*.</summary>
[Flags]
public enum TunnelFlags { None = 0, Csum = 1, RemoteCsum = 2 }

/// <summary>Scheduler flags by the kernel's bit values (IP_VS_SVC_F_SCHED1..3); names depend on the scheduler.</summary>
[Flags]
public enum SchedulerFlags { None = 0, Flag1 = 0x0008, Flag2 = 0x0010, Flag3 = 0x0020 }
