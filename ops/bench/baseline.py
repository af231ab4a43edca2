"""What the baseline servers share: the login handshake, the writer and the process around a handler.

A baseline speaks just enough of the protocol for the load generator: the
first frame is ``{"type": "login", "ref", "user", "peer"}`` (answered with
``ok``), every later frame is forwarded or routed. No auth, no receipts, no
durability: the baselines measure the ceiling, not a product.
"""
import signal
import socket

import click
import gevent
from gevent.server import StreamServer

from . import wire


def login(sock):
    """Read the login frame; answer ``ok``; returns (user, peer, bytes already read past it)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before login")
        buf += data
        for start, end in wire.spans(buf):
            frame = wire.decode(bytes(buf[start:end]))
            sock.sendall(wire.encode({"type": "ok", "ref": frame["ref"], "user": frame["user"]}))
            return frame["user"], frame.get("peer"), buf[end:]


def frames(sock, buf):
    """Decoded frames from ``sock`` until the peer closes (``buf``: bytes already read)."""
    while True:
        bodies, used = wire.split(buf)
        del buf[:used]
        for body in bodies:
            yield wire.decode(body)
        data = sock.recv(262144)
        if not data:
            return
        buf += data


def write(sock, mailbox):
    """A connection's writer: whatever its mailbox holds, encoded and sent in one system call."""
    while True:
        frames = [mailbox.get()]
        while mailbox.qsize():
            frames.append(mailbox.get_nowait())
        sock.sendall(b"".join(map(wire.encode, frames)))


def main(handler, description):
    """A click command serving ``handler(sock, addr)`` until SIGTERM; prints its address."""
    @click.command(help=description)
    @click.option("--listen", default="127.0.0.1:0", show_default=True)
    def run(listen):
        host, _, port = listen.rpartition(":")
        server = StreamServer((host, int(port)), handler, backlog=1024)
        server.start()
        print("listening on %s:%d" % server.address[:2], flush=True)
        gevent.signal_handler(signal.SIGTERM, server.stop)
        server.serve_forever()
    run()
