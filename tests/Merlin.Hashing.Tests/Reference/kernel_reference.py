#!/usr/bin/env python3
"""Independent Python model of the kernel hashes used to derive expectations in
KernelMhTests / NftFlowHashTests. Written from the kernel sources' behaviour (lib/siphash.c,
include/linux/jhash.h, net/netfilter/ipvs/ip_vs_mh.c, ip_vs_sh.c), not from the C# code.
Run: python3 kernel_reference.py"""
import ipaddress, struct

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1

def rotl64(x, b): return ((x << b) | (x >> (64 - b))) & M64
def rotl32(x, b): return ((x << b) | (x >> (32 - b))) & M32

def siphash(k0, k1, msg, c, d):
    v = [k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d, k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573]
    def rnd():
        v[0] = (v[0] + v[1]) & M64; v[1] = rotl64(v[1], 13); v[1] ^= v[0]; v[0] = rotl64(v[0], 32)
        v[2] = (v[2] + v[3]) & M64; v[3] = rotl64(v[3], 16); v[3] ^= v[2]
        v[0] = (v[0] + v[3]) & M64; v[3] = rotl64(v[3], 21); v[3] ^= v[0]
        v[2] = (v[2] + v[1]) & M64; v[1] = rotl64(v[1], 17); v[1] ^= v[2]; v[2] = rotl64(v[2], 32)
    full = len(msg) // 8 * 8
    for i in range(0, full, 8):
        m = int.from_bytes(msg[i:i + 8], 'little')
        v[3] ^= m
        for _ in range(c): rnd()
        v[0] ^= m
    b = ((len(msg) & 0xff) << 56) | int.from_bytes(msg[full:], 'little')
    v[3] ^= b
    for _ in range(c): rnd()
    v[0] ^= b
    v[2] ^= 0xff
    for _ in range(d): rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]

def hsiphash64(key, u32):  # 64-bit kernel: SipHash-1-3 truncated
    return siphash(key, key, struct.pack('<I', u32 & M32), 1, 3) & M32

def jhash(data, initval):
    a = b = c = (0xdeadbeef + len(data) + initval) & M32
    def mix(a, b, c):
        a = (a - c) & M32; a ^= rotl32(c, 4); c = (c + b) & M32
        b = (b - a) & M32; b ^= rotl32(a, 6); a = (a + c) & M32
        c = (c - b) & M32; c ^= rotl32(b, 8); b = (b + a) & M32
        a = (a - c) & M32; a ^= rotl32(c, 16); c = (c + b) & M32
        b = (b - a) & M32; b ^= rotl32(a, 19); a = (a + c) & M32
        c = (c - b) & M32; c ^= rotl32(b, 4); b = (b + a) & M32
        return a, b, c
    def final(a, b, c):
        c ^= b; c = (c - rotl32(b, 14)) & M32
        a ^= c; a = (a - rotl32(c, 11)) & M32
        b ^= a; b = (b - rotl32(a, 25)) & M32
        c ^= b; c = (c - rotl32(b, 16)) & M32
        a ^= c; a = (a - rotl32(c, 4)) & M32
        b ^= a; b = (b - rotl32(a, 14)) & M32
        c ^= b; c = (c - rotl32(b, 24)) & M32
        return a, b, c
    k = data
    while len(k) > 12:
        a = (a + int.from_bytes(k[0:4], 'little')) & M32
        b = (b + int.from_bytes(k[4:8], 'little')) & M32
        c = (c + int.from_bytes(k[8:12], 'little')) & M32
        a, b, c = mix(a, b, c)
        k = k[12:]
    if not k: return c
    k = k + bytes(12 - len(k))
    a = (a + int.from_bytes(k[0:4], 'little')) & M32
    b = (b + int.from_bytes(k[4:8], 'little')) & M32
    c = (c + int.from_bytes(k[8:12], 'little')) & M32
    a, b, c = final(a, b, c)
    return c

KEY1, KEY2 = 2654435761, 2654446892

def mh_table(dests_add_order, size=251, tab_bits=6):
    lst = list(reversed(dests_add_order))          # list_add_rcu: newest at the head
    ws = [w for _, _, w in lst]
    pos = [w for w in ws if w > 0]
    g = 0
    for w in pos:
        import math
        g = math.gcd(g, w) if g else w
    mx = max(ws)
    shift = max(0, (mx // g).bit_length() - tab_bits)
    turns = [((w // g) >> shift) or (1 if w else 0) for w in ws]
    setup = []
    for (addr, port, _), t in zip(lst, turns):
        v = (port + int(ipaddress.IPv4Address(addr))) & M32
        setup.append([hsiphash64(KEY1, v) % size, hsiphash64(KEY2, v) % (size - 1) + 1, t])
    table = [None] * size
    n = 0
    while n < size:
        for s, (addr, port, _) in zip(setup, lst):
            for _ in range(s[2]):
                c = s[0]
                while table[c] is not None:
                    c = (c + s[1]) % size
                s[0] = c
                table[c] = f"{addr}:{port}"
                n += 1
                if n == size: return setup, table
    return setup, table

if __name__ == '__main__':
    dests = [("198.18.0.21", 80, 1), ("198.18.0.22", 80, 1), ("198.18.0.23", 80, 1)]
    setup, table = mh_table(dests)
    print("mh 251, add order .21 .22 .23 weight 1")
    for (addr, port, _), s in zip(reversed(dests), setup): print(f"  {addr}:{port} offset={s[0]} skip={s[1]} (perm after fill)")
    for (addr, port, _) in dests:
        v = (port + int(ipaddress.IPv4Address(addr))) & M32
        print(f"  {addr}:{port} offset={hsiphash64(KEY1, v) % 251} skip={hsiphash64(KEY2, v) % 250 + 1}")
    print("  first 24 slots:", [t.split('.')[-1].split(':')[0] for t in table[:24]])
    counts = {}
    for t in table: counts[t] = counts.get(t, 0) + 1
    print("  slots per dest:", counts)
    setup, table = mh_table(list(reversed(dests)))
    print("  reversed add order, first 24:", [t.split('.')[-1].split(':')[0] for t in table[:24]])
    client = int(ipaddress.IPv4Address("203.0.113.9"))
    for port in (0, 40000):
        h = hsiphash64(KEY1, (client + port) & M32) % 251
        print(f"  lookup 203.0.113.9 port {port}: slot {h}")
    for flow in [("203.0.113.9", 40000), ("198.51.100.200", 1234)]:
        key = ipaddress.IPv4Address(flow[0]).packed + struct.pack('>H', flow[1]) + b'\0\0'
        h = jhash(key, 0x1234)
        print(f"nft jhash {flow[0]} . {flow[1]} seed 0x1234: {h:#010x}, mod 509 -> {(h * 509) >> 32}")
        h = jhash(ipaddress.IPv4Address(flow[0]).packed, 0x1234)
        print(f"nft jhash {flow[0]} seed 0x1234: {h:#010x}, mod 509 -> {(h * 509) >> 32}")
    print("jhash('Four score and seven years ago', 0) =", hex(jhash(b"Four score and seven years ago", 0)))
    print("jhash('Four score and seven years ago', 1) =", hex(jhash(b"Four score and seven years ago", 1)))
