"""A whatsup node: wires the account store, offd, the router and the listener together.

Start-up opens the stores (recovery included) before the listener accepts, so
no client ever sees a half-recovered spool. Stop: stop accepting, tell every
session, flush offd, close the stores.
"""
import collections
import errno
import logging
import os
import signal
import time

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from . import __version__
from .accounts import AccountStore
from .config import ConfigError
from .offd import Offd, ShardMismatch
from .router import Router
from .runtime import Process, ProcessTable
from .session import Session
from .sm import SessionManager

log = logging.getLogger("whatsup.node")
TICK = 1.0


class StartError(Exception):
    """The node cannot start; the message is one line for the operator."""


def parse_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {text!r} must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.server_name = f"whatsup/{__version__}"
        self.data_dir = os.path.abspath(cfg.data_dir)
        self.table = ProcessTable(cfg["server.node"])
        self.sm = SessionManager()
        self.counters = collections.Counter()
        self.accounts = AccountStore(os.path.join(self.data_dir, "accounts.sqlite"),
                                     cfg["accounts.scrypt_n"], cfg["accounts.hash_threads"])
        self.offd = Offd(os.path.join(self.data_dir, "offd"), cfg["offd.shards"],
                         cfg["offd.segment_bytes"], cfg["offd.max_queue"], cfg["offd.expiry_days"])
        self.router = Router(self.table, self.sm, self.offd, self.accounts, cfg["session.dedup_window"])
        self.server = None
        self.started = None
        self.stopped = Event()
        self._loops = []

    def __repr__(self):
        return (f"<Node {self.table.node} listen={self.address} online={len(self.sm)} "
                f"processes={len(self.table)} queued={self.offd.queued()}>")

    @property
    def address(self):
        return self.server.address if self.server is not None else None

    def start(self):
        self._prepare_data_dir()
        try:
            self.accounts.open()
            self.offd.open()
        except ShardMismatch as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"cannot open the stores in {self.data_dir}: {exc.strerror or exc}") from None
        self.router.rebuild()
        host, port = parse_address(self.cfg["server.listen"])
        try:
            self.server = StreamServer((host, port), self._connection, backlog=1024)
            self.server.start()
        except OSError as exc:
            self.accounts.close()
            self.offd.close()
            if exc.errno == errno.EADDRINUSE:
                raise StartError(f"cannot listen on {host}:{port}: the address is already in use") from None
            raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.started = time.time()
        self._loops = [gevent.spawn(self._sweep), gevent.spawn(self._maintain)]
        log.info("whatsupd %s listening on %s:%d, data in %s (%d users, %d items queued)",
                 __version__, *self.server.address[:2], self.data_dir, len(self.accounts.users),
                 self.offd.queued())
        return self

    def _prepare_data_dir(self):
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            probe = os.path.join(self.data_dir, ".write-test")
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as exc:
            raise StartError(f"data dir {self.data_dir} is not writable: {exc.strerror or exc}") from None

    def _connection(self, sock, addr):
        """StreamServer handler: this connection's greenlet becomes its session process."""
        Process(self.table, Session, (self, sock, addr), entity=f"{addr[0]}:{addr[1]}").run_here()

    def _sweep(self):
        """Tell every session the time once a second, so it can check its own deadlines."""
        while True:
            gevent.sleep(TICK)
            now = time.monotonic()
            for proc in self.table.processes("session"):
                proc.mailbox.put(("tick", now))

    def _maintain(self):
        while True:
            gevent.sleep(self.cfg["offd.maintenance_interval"])
            try:
                self.offd.maintain()
            except Exception:
                log.exception("offd maintenance failed")

    def stop(self, timeout=10.0):
        """Graceful stop: no new connections, sessions told and closed, offd flushed."""
        if self.stopped.is_set():
            return
        log.info("stopping: closing %d sessions, flushing offd", len(self.sm))
        if self.server is not None:
            self.server.close()
        for loop in self._loops:
            loop.kill()
        sessions = self.table.processes("session")
        for proc in sessions:
            proc.mailbox.put(("shutdown",))
        gevent.joinall([p.greenlet for p in sessions], timeout=timeout)
        self.offd.close()
        self.accounts.close()
        log.info("stopped")
        self.stopped.set()

    def serve_forever(self):
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self.stop))
        self.stopped.wait()
