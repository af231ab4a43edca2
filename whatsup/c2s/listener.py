"""Gated servers: what a connection must pass before it costs a session (docs/PROTOCOL.md, "Limits").

Three gates, cheapest first:

* **max connections** — every listener spawns from one shared gevent ``Pool``;
  when it is full, gevent stops accepting until a connection ends, so excess
  clients wait in the kernel's backlog instead of costing memory;
* **per-IP caps** — checked in ``do_handle``, before any greenlet is spawned:
  open connections per address, and connections not yet logged in per address
  and per network (/24 IPv4, /56 IPv6), so a pre-auth hold or slowloris from
  one network costs a bounded number of sessions. A refused connection gets
  one ``too_many_connections`` error frame (plain TCP only; a non-blocking send
  into an empty socket buffer) and is closed;
* **descriptors** — the pool holds at most the open files limit less
  :data:`FD_RESERVE` (:func:`connection_cap`), so the stores, new offd segments
  and the operator shell always find a descriptor; if accept still fails for
  want of one (EMFILE, ENFILE: something else took them), the server stops
  accepting for :data:`ACCEPT_PAUSE` seconds and logs one summarised line
  instead of a traceback per attempt;
* **flood penalty** — an address (network) whose connections were closed with
  ``flooding`` too often lately gets none for a while (:meth:`ConnectionGate.flooded`);
* **TLS handshake deadline** — a TLS connection is wrapped and handshaken in its
  own greenlet within ``protocol.login_timeout``; a client that never finishes
  the handshake costs one pool slot for that long, never a session.
"""
import collections
import errno
import logging
import os
import resource

import gevent
from gevent import ssl
from gevent.server import StreamServer

from .. import protocol
from .admission import prefix
from ..protocol import Code, error_frame
from ..runtime import StartFailed

log = logging.getLogger("whatsup.listener")
#: Descriptors kept out of the connection pool: sqlite files with their WAL/SHM, offd segments,
#: directory fsyncs, the backdoor and metrics sockets, the log.
FD_RESERVE = 128
ACCEPT_PAUSE = 0.5
#: Connections accepted per turn of the hub (gevent's default is 100): under a connection flood
#: a turn of 100 took ~15 ms, during which no session ran (ops/attack.py).
ACCEPTS_PER_TURN = 16
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_cap(max_connections):
    """Connections a node may hold: ``max_connections``, within the open files limit less FD_RESERVE."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_RESERVE))


class ConnectionGate:
    """Open connections per client IP, and those not logged in yet per IP and per network,
    shared by all listeners of a node. Keyed by the (ip, port) of each connection."""

    def __init__(self, per_ip, unauthenticated_per_ip, unauthenticated_per_prefix, floods=None):
        self.per_ip = per_ip
        self.unauth_per_ip, self.unauth_per_prefix = unauthenticated_per_ip, unauthenticated_per_prefix
        self.floods = floods  # {"ip": KeyedLimiter, "prefix": KeyedLimiter} of flooding closes
        self.open = collections.Counter()
        self.unauth = collections.Counter()  # ip and network -> connections not logged in
        self.pending = {}  # (ip, port) -> network, while not logged in

    def __repr__(self):
        return (f"<ConnectionGate ips={len(self.open)} open={sum(self.open.values())} "
                f"unauthenticated={len(self.pending)} per_ip={self.per_ip}>")

    def admit(self, addr):
        """Count a new connection in; returns why it is refused, or None."""
        ip, net = addr[0], prefix(addr[0])
        if self.floods is not None and not (self.floods["ip"].allowed(ip) and self.floods["prefix"].allowed(net)):
            return "connections from this address or network were closed for flooding lately"
        if self.open[ip] >= self.per_ip:
            return f"at most {self.per_ip} connections per address"
        if self.unauth[ip] >= self.unauth_per_ip:
            return f"at most {self.unauth_per_ip} connections per address not logged in"
        if self.unauth[net] >= self.unauth_per_prefix:
            return f"at most {self.unauth_per_prefix} connections per network not logged in"
        self.open[ip] += 1
        self.unauth[ip] += 1
        self.unauth[net] += 1
        self.pending[addr[:2]] = net
        return None

    def flooded(self, addr):
        """A connection from ``addr`` was closed with flooding: past server.flood_closes of those
        per address (or 10 × that per network) within a minute, the address (network) gets no
        new connection until the count refills, so a flooder cannot cycle connections for free."""
        if self.floods is not None:
            self.floods["ip"].charge(addr[0])
            self.floods["prefix"].charge(prefix(addr[0]))

    def authenticated(self, addr):
        """The connection from ``addr`` logged in: it no longer counts as unauthenticated."""
        net = self.pending.pop(addr[:2], None)
        if net is not None:
            _drop(self.unauth, addr[0])
            _drop(self.unauth, net)

    def leave(self, addr):
        self.authenticated(addr)
        _drop(self.open, addr[0])


def _drop(counter, key):
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


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
        self._paused = None  # the timer that resumes accepting after running out of descriptors
        self.max_accept = ACCEPTS_PER_TURN

    def do_read(self):
        """Accept one connection; out of descriptors, pause accepting instead of failing loudly."""
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in OUT_OF_FDS:
                raise
            why = os.strerror(exc.errno)
        self.counters["accept_paused"] += 1
        log.warning("cannot accept connections: %s; pausing accepts for %s s", why, ACCEPT_PAUSE)
        self.stop_accepting()
        self._paused = self.loop.timer(ACCEPT_PAUSE)
        self._paused.start(self._resume)
        return None

    def _resume(self):
        self._paused.close()
        if not self.closed:
            self.start_accepting()

    def do_handle(self, sock, addr):
        refused = self.gate.admit(addr)
        if refused is not None:
            self.counters["refused:" + Code.TOO_MANY_CONNECTIONS] += 1  # /metrics counts them all;
            log.debug("connection from %s refused: %s", addr[0], refused)  # a record cost 33 of 110 µs
            if self.tls is None:
                try:
                    sock.settimeout(0.0)
                    sock.send(protocol.encode(error_frame(Code.TOO_MANY_CONNECTIONS, refused)))
                except OSError:
                    pass
            sock.close()
            return
        try:
            super().do_handle(sock, addr)
        except BaseException:
            self.gate.leave(addr)  # nothing was spawned: the socket is already closed
            raise

    def _serve(self, sock, addr):
        try:
            if self.tls is not None:
                sock = self._handshake(sock, addr)
                if sock is None:
                    return
            self.serve(sock, addr)
        finally:
            self.gate.leave(addr)

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
