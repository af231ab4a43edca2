"""Baseline (a): a raw frame forwarder. Cuts the byte stream at frame boundaries and writes each
complete run of frames to the partner connection, decoding nothing.

Nothing a message server does can be cheaper, so the load generator must drive
this faster than whatsup: that proves the load generator is not the bottleneck.
``python3 -m ops.bench.forwarder --listen 127.0.0.1:0``
"""
from . import baseline, wire

conns = {}  # user -> socket


def handle(sock, addr):
    user, peer, buf = baseline.login(sock)
    conns[user] = sock
    partner = None
    try:
        while True:
            n = wire.boundary(buf)
            if n:
                partner = partner or conns[peer]  # the load generator sends only after every login
                partner.sendall(bytes(buf[:n]))
                del buf[:n]
            data = sock.recv(262144)
            if not data:
                break
            buf += data
    finally:
        conns.pop(user, None)
        sock.close()


if __name__ == "__main__":
    baseline.main(handle, __doc__)
