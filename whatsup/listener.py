"""Gated servers: what a connection must pass before it costs a session (docs/PROTOCOL.md, "Limits").

Three gates, cheapest first:

* **max connections** — every listener spawns from one shared gevent ``Pool``;
  when it is full, gevent stops accepting until a connection ends, so excess
  clients wait in the kernel's backlog instead of costing memory;
* **per-IP cap** — checked in ``do_handle``, before any greenlet is spawned: a
  refused connection gets one ``too_many_connections`` error frame (plain TCP
  only; a non-blocking send into an empty socket buffer) and is closed;
* **TLS handshake deadline** — a TLS connection is wrapped and handshaken in its
  own greenlet within ``protocol.login_timeout``; a client that never finishes
  the handshake costs one pool slot for that long, never a session.
"""
import collections
import logging

import gevent
from gevent import ssl
from gevent.server import StreamServer

from . import protocol
from .protocol import Code, error_frame
from .runtime import StartFailed

log = logging.getLogger("whatsup.listener")


class ConnectionGate:
    """Open connections per client IP, shared by all listeners of a node."""

    def __init__(self, per_ip):
        self.per_ip = per_ip
        self.open = collections.Counter()

    def __repr__(self):
        return f"<ConnectionGate ips={len(self.open)} open={sum(self.open.values())} per_ip={self.per_ip}>"

    def admit(self, ip):
        if self.open[ip] >= self.per_ip:
            return False
        self.open[ip] += 1
        return True

    def leave(self, ip):
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


def server_context(certfile, keyfile):
    """The TLS context of the TLS listener (TLS 1.2 at least); StartFailed if it cannot load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise StartFailed(f"cannot load the TLS certificate {certfile!r} and key {keyfile!r}: {exc}") from None
    return ctx


class GatedServer(StreamServer):
    """A StreamServer that applies the gates above, then calls ``serve(sock, addr)``."""

    def __init__(self, address, serve, pool, gate, counters, tls=None, handshake_timeout=30.0):
        super().__init__(address, self._serve, spawn=pool, backlog=1024)
        self.serve, self.gate, self.counters = serve, gate, counters
        self.tls, self.handshake_timeout = tls, handshake_timeout

    def do_handle(self, sock, addr):
        if not self.gate.admit(addr[0]):
            self.counters["refused:" + Code.TOO_MANY_CONNECTIONS] += 1
            if self.tls is None:
                try:
                    sock.settimeout(0.0)
                    sock.send(protocol.encode(error_frame(
                        Code.TOO_MANY_CONNECTIONS, f"at most {self.gate.per_ip} connections per address")))
                except OSError:
                    pass
            sock.close()
            return
        try:
            super().do_handle(sock, addr)
        except BaseException:
            self.gate.leave(addr[0])  # nothing was spawned: the socket is already closed
            raise

    def _serve(self, sock, addr):
        try:
            if self.tls is not None:
                sock = self._handshake(sock, addr)
                if sock is None:
                    return
            self.serve(sock, addr)
        finally:
            self.gate.leave(addr[0])

    def _handshake(self, sock, addr):
        tls = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            with gevent.Timeout(self.handshake_timeout):
                tls.do_handshake()
        except (OSError, gevent.Timeout) as exc:
            self.counters["tls_handshake_failed"] += 1
            log.info("TLS handshake with %s:%d failed: %s", addr[0], addr[1], exc or "timed out")
            tls.close()
            return None
        return tls
