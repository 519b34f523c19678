# 40 sources x 3 ports, non-blocking SYNs to the virtual service; argv[1] is the first port.
import socket, sys, time
base = int(sys.argv[1])
socks = []
for i in range(1, 41):
    for port in (base, base + 1, base + 7):
        s = socket.socket(); s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((f"198.18.100.{i}", port))
        s.connect_ex(("198.18.0.1", 80))
        socks.append(s)
time.sleep(0.5)
