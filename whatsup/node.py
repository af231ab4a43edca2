"""A whatsup node: a supervision tree of the stores, the loops, the sessions and the listener.

::

    root (rest_for_one)
    ├── accounts   supervisor (one_for_one): account shards 0..N-1, hashers 0..H-1
    ├── offd       supervisor (one_for_one): offd shards 0..M-1
    ├── social     the groups, blocks, privacy, bans, retired names and invites tables
    │              (whatsup/store/tables.py)
    ├── services   supervisor (one_for_one): the processes owning the router, presence,
    │              blocks and the groups' membership (called directly by the sessions,
    │              whatsup/runtime/service.py), and ``groups``: a supervisor adopting
    │              one process per active group (whatsup/social/groups.py)
    ├── maintenance  ticker: offd compaction and expiry, cast to every shard
    ├── sessions   supervisor: every connection's session, adopted as a temporary child
    ├── sweeper    ticker: forgets forgiven failed logins, logs due log summaries
    ├── listener   the listening sockets (plain, and TLS if configured); a handler
    │              greenlet becomes a session process
    ├── control    the control socket whatsupctl talks to (whatsup/ctl/)
    ├── push       sends push notifications to the gateway (whatsup/users/push.py; if push.url)
    └── sd_watchdog  ticker: WATCHDOG=1 to systemd (whatsup/observe/sdnotify.py; if WatchdogSec)

Children start in that order, so the stores (with recovery) are open before
the listener accepts, and stop in the reverse order. A crash restarts the
process alone (one_for_one) or what depends on it (rest_for_one); a crash
loop climbs the tree by the restart intensity rule (runtime.max_restarts in
runtime.restart_period), and when the root gives up the node stops with exit
status 1. The node holds ``data_dir/LOCK`` while it runs (see datadir.py).
See docs/ARCHITECTURE.md.

Connection limits (one pool for ``server.max_connections``, the per-IP gate,
the TLS handshake deadline) live in :mod:`whatsup.c2s.listener`; the node owns
the pool, the gate and the failed-login limiters, so they outlive a listener
restart and cover every connection of a user.
"""
import collections
import errno
import gc
import logging
import os
import signal
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool

from . import __version__
from .observe import logformat, logs, metrics, sdnotify, watchdog
from .store.accounts import AccountStore
from .c2s.admission import Admission, KnownLogins
from .c2s.core import limits
from .c2s.services import Services
from .address import split as split_address
from .social.blocking import Blocks, BlocksProcess
from .config import ConfigError
from .ctl.server import ControlServer, socket_path as control_path
from .store.datadir import DataDirBusy, InsecureDataDir, ShardMismatch, identity, lock, secure, shard_count
from .social.groups import SUPERVISOR as GROUP_SUPERVISOR, Groups, GroupsProcess
from .users.devices import Devices
from .users.lifecycle import Lifecycle
from .c2s.listener import FD_RESERVE, ConnectionGate, GatedServer, connection_cap, server_context
from .store.offd import Offd
from .protocol import Code
from .social.presence import Presence, PresenceProcess
from .users.push import Push, PushWorker
from .runtime.ratelimit import Guesses, KeyedLimiter, Pacer
from .users.registration import Registration
from .routing.router import Router, RouterProcess
from .runtime import Process, ProcessDead, ProcessTable, StartFailed
from .runtime.process import strays
from .runtime.industry import ShardRegistry, UnknownKind
from .runtime.supervisor import NORMAL, Child, SupSpec, Supervisor, adopt, terminate_child
from .runtime.ticker import Ticker
from .runtime.timers import Timers
from .c2s.session import Session
from .shell.helpers import Helpers
from .shell.server import Backdoor
from .routing.sm import SessionManager
from .store.tables import TableStore
from .cluster import map as cluster_map
from .cluster.directory import MapMismatch
from .cluster.engine import UNREACHABLE
from .cluster.homes import Homes
from .cluster.link import Link, Options as ClusterOptions

log = logging.getLogger("whatsup.node")
SWEEP = 1.0  # seconds between two sweeps (failed logins, log summaries): work on neither grows with sessions


class StartError(Exception):
    """The node cannot start; the message is one line for the operator."""


def parse_address(text):
    try:
        return split_address(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Listener:
    """The process owning the listening sockets (gen_server callbacks): plain TCP, and TLS when
    ``tls.listen`` is set. Both spawn sessions from the node's one pool through its gate."""
    kind = "listener"
    vsn = 1

    @staticmethod
    def init(proc, node):
        servers = []
        try:
            node.server = Listener._listen(node, node.cfg.server.listen, node.server)
            servers.append(node.server)
            if node.cfg.tls.listen:
                tls = server_context(node.cfg.tls.certfile, node.cfg.tls.keyfile)
                node.tls_server = Listener._listen(node, node.cfg.tls.listen, node.tls_server, tls)
                servers.append(node.tls_server)
        except StartFailed:
            for server in servers:
                server.close()
            raise
        return servers

    @staticmethod
    def _listen(node, address, previous, tls=None):
        host, port = parse_address(address)
        if previous is not None:  # a restart keeps the port an ephemeral ":0" got the first time
            host, port = previous.address[:2]
        server = GatedServer((host, port), node._connection, node.pool, node.gate, node.counters, tls,
                             node.cfg.protocol.login_timeout)
        try:
            server.start()
        except OSError as exc:
            why = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
            raise StartFailed(f"cannot listen on {host}:{port}: {why}") from None
        return server

    @staticmethod
    def describe(servers):
        return {"addresses": [s.address for s in servers], "closed": all(s.closed for s in servers)}

    @staticmethod
    def terminate(proc, reason, servers):
        for server in servers:
            server.close()


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.server_name = f"whatsup/{__version__}"
        self.node_id = None  # the data dir's identity, read at start
        self.data_dir = os.path.abspath(cfg.data_dir)
        self.table = ProcessTable(cfg.server.node)
        self.timers = Timers(self.table)  # the sessions' deadlines (idle, login, send timeouts)
        self.sm = SessionManager()
        self.counters = collections.Counter()
        wait = cfg.runtime.restart_wait
        accounts_dir, offd_dir = (os.path.join(self.data_dir, store) for store in ("accounts", "offd"))
        self.accounts = AccountStore(
            self.table, accounts_dir, shard_count(accounts_dir, cfg.accounts.shards),
            cfg.accounts.scrypt_n, cfg.accounts.hash_threads, wait,
            Admission(cfg.accounts.hash_threads, cfg.auth.max_waiting, cfg.auth.checks_per_ip,
                      cfg.auth.checks_per_prefix, Code.BUSY),
            KnownLogins(cfg.auth.known_logins, cfg.auth.known_ttl),
            KeyedLimiter(cfg.auth.ip_registrations, cfg.auth.failure_window), cfg.accounts.hash_nice,
            (cfg.auth.wait_timeout, cfg.auth.hash_timeout))
        self.offd = Offd(self.table, offd_dir, shard_count(offd_dir, cfg.offd.shards),
                         cfg.offd.segment_bytes, cfg.offd.max_queue, cfg.offd.expiry_days, wait,
                         cfg.session.dedup_window,  # the router's callbacks (it is made next):
                         devices=self.accounts.devices, on_ready=lambda user: self.router.poke(user),
                         carry=lambda sender, hs: self.router.dedup.pick(sender, hs),
                         on_up=lambda spool, restarted: self.router.shard_up(spool, restarted),
                         commit_interval=cfg.offd.commit_interval)
        self.blocks = Blocks(self.accounts, lambda pid, ok: self.router.ok_when_durable(pid, ok))
        self.push = Push(cfg, self.sm, self.offd, self.timers)
        self.link = self.homes = None  # a cluster's (cluster.map): whatsup/cluster/
        if cfg.cluster.map:
            self.link = Link(self.table, cluster_map.load(cfg.cluster.map), cfg.server.node,
                             ClusterOptions.from_config(cfg))
            self.homes = Homes(self.link, self.sm, self.offd, self.accounts, cfg.session.window,
                               cfg.session.max_outbound // 2)
            self.accounts.away = self.homes
        self.router = Router(self.table, self.sm, self.offd, self.accounts, self.blocks,
                             cfg.session.dedup_window, self.timers, offline=self.push.queued,
                             retry=cfg.runtime.retry_interval, remote=self.homes)
        self.groups = Groups(self.table, self.timers, self.router, self.offd, self.accounts,
                             cfg.groups.max_members, cfg.groups.fanout_chunk, cfg.groups.sender_budget,
                             Pacer(cfg.groups.sender_copies, cfg.session.rate_burst),
                             cfg.groups.process_idle, cfg.groups.op_timeout)
        self.presence = Presence(self.sm, self.accounts, self.blocks, self.groups, self.router)
        self.failed_logins = Guesses({  # "user" / "ip" / "prefix" -> limiter of failed password checks
            "user": KeyedLimiter(cfg.auth.user_failures, cfg.auth.failure_window),
            "ip": KeyedLimiter(cfg.auth.ip_failures, cfg.auth.failure_window),
            "prefix": KeyedLimiter(cfg.auth.prefix_failures, cfg.auth.failure_window)})
        self.devices = Devices(self.accounts, self.offd, self.sm, self.router, self.failed_logins,
                               cfg.devices.max_companions, cfg.devices.link_ttl, cfg.devices.inactive_after * 86400)
        self.lifecycle = Lifecycle(self.sm, self.router, self.accounts, self.offd, self.groups, self.blocks,
                                   self.presence, vars(cfg.accounts), cfg.accounts.name_reuse_days,
                                   self.failed_logins)
        self.registration = Registration(cfg.accounts.registration, cfg.accounts.invite_days,
                                         self.lifecycle.is_retired, cfg.accounts.user_invites)
        if self.homes is not None:
            self.homes.wire(self.router, self.presence, self.blocks, self.groups, self.lifecycle, self.devices)
            self.link.services.update({"summary": self.summary,
                                       "shell": lambda verb, args: Helpers(self).serve(verb, args)})
        self.registry = ShardRegistry()
        self.registry.add(self.accounts.industry)
        self.registry.add(self.offd.industry)
        self.backdoor = Backdoor(self, cfg.shell.listen)
        self.pool = Pool(connection_cap(cfg.server.max_connections))
        self.gate = ConnectionGate(cfg.server.max_connections_per_ip, cfg.server.unauthenticated_per_ip,
                                   cfg.server.unauthenticated_per_prefix, {
                                       "ip": KeyedLimiter(cfg.server.flood_closes, cfg.server.flood_window),
                                       "prefix": KeyedLimiter(10 * cfg.server.flood_closes,
                                                                     cfg.server.flood_window)})
        self.server = self.tls_server = None
        self.services = None  # what sessions use (c2s.services), made at start once node_id is known
        self.root = None
        self.metrics = metrics.Exporter(self, cfg.metrics.listen)
        self.started = None
        self.exit_code = 0
        self.stopped = Event()
        self._stopping = False
        self._lock = None

    def __repr__(self):
        return (f"<Node {self.table.node} listen={self.address} online={len(self.sm)} "
                f"processes={len(self.table)} queued={self.offd.queued()}>")

    @property
    def stopping(self):
        return self._stopping

    @property
    def address(self):
        return self.server.address if self.server is not None else None

    def summary(self):
        """What nodes() shows of this node."""
        return {"connections": self.sm.connections(), "online": len(self.sm),
                "mailboxes": sum(len(p.mailbox) for p in self.table.processes()),
                "outbox": len(self.link.out) if self.link is not None else None}

    def where(self, kind, entity):
        """Which shard, worker and pid handle ``entity``: kinds offd, accounts and session."""
        if kind == "session":
            return {"kind": kind, "entity": entity, "node": self.table.node, "pid": self.sm.lookup(entity),
                    "devices": self.sm.devices(entity)}
        try:
            return self.registry.where(kind, entity)
        except UnknownKind as exc:
            raise UnknownKind(f"{exc}, session") from None

    # --- start ----------------------------------------------------------------------

    def start(self):
        watchdog.install()
        self._prepare_data_dir()
        try:
            self._lock = lock(self.data_dir)
            self.node_id = identity(self.data_dir)
            self.services = self._services()
            self.backdoor.start()  # before recovery: the operator can look into a slow one
            self.metrics.start()
            self.accounts.check()
            self.offd.check()
            self._join()
            self.root = self.table.start(Supervisor, self._tree(), name="root")
        except (DataDirBusy, ShardMismatch, StartFailed, ConfigError, MapMismatch) as exc:
            self._release()
            raise StartError(str(exc)) from None
        except OSError as exc:
            self._release()
            raise StartError(f"cannot open the stores in {self.data_dir}: {exc.strerror or exc}") from None
        self.table.monitor(self.root, self._root_down)
        self.started = time.time()
        gc.freeze()  # what recovery built lives long: full collections skip it (ops/offd_figures.py stall)
        log.info("whatsupd %s listening on %s:%d, data in %s (%d users, %d items queued)",
                 __version__, *self.server.address[:2], self.data_dir, len(self.accounts.users),
                 self.offd.queued())
        if self.tls_server is not None:
            log.info("TLS clients on %s:%d", *self.tls_server.address[:2])
        log.info("at most %d connections (server.max_connections, within the open files limit less %d)",
                 self.pool.size, FD_RESERVE)
        sdnotify.notify("READY=1\nSTATUS=listening on %s:%d\nMAINPID=%d" % (*self.server.address[:2], os.getpid()))
        return self

    def _join(self):
        """In a cluster: check the map against Redis's, take a boot epoch and a lease."""
        if self.link is None:
            return
        try:
            self.link.connect()
        except UNREACHABLE as exc:
            raise StartError(f"cannot reach Redis at {self.link.map.redis} (cluster.map): {exc}") from None

    def _services(self):
        """The one Services every session gets (whatsup/c2s/services.py)."""
        return Services(
            limits=limits(self.cfg), account_rules=vars(self.cfg.accounts), server_name=self.server_name,
            node_id=self.node_id, counters=self.counters, timers=self.timers, gate=self.gate,
            failed_logins=self.failed_logins, sm=self.sm, accounts=self.accounts,
            registration=self.registration, lifecycle=self.lifecycle, offd=self.offd, router=self.router,
            groups=self.groups, presence=self.presence, blocks=self.blocks, push=self.push,
            devices=self.devices, homes=self.homes)

    def _tree(self):
        cfg = self.cfg
        intensity = dict(max_restarts=cfg.runtime.max_restarts, period=cfg.runtime.restart_period)

        def supervisor(name, strategy, children):
            return Child(name, lambda: self.table.start(Supervisor, SupSpec(strategy, tuple(children),
                                                                            **intensity), name=name))

        def ticker(name, interval, fn):
            return Child(name, lambda: self.table.start(Ticker, interval, fn, name=name, kind=name))

        def service(name, behaviour, obj):
            return Child(name, lambda: self.table.start(behaviour, obj, name=name))
        return SupSpec("rest_for_one", (
            supervisor("accounts", "one_for_one", self.accounts.children()),
            supervisor("offd", "one_for_one", self.offd.children()),
            Child("social", self._social),
            supervisor("services", "one_for_one", (
                service("router", RouterProcess, self.router), service("presence", PresenceProcess, self.presence),
                service("blocks", BlocksProcess, self.blocks), service("membership", GroupsProcess, self.groups),
                supervisor(GROUP_SUPERVISOR, "one_for_one", ()))),
            ticker("maintenance", cfg.offd.maintenance_interval, self._maintain),
            *([supervisor("cluster", "one_for_one", self.link.children())] if self.link is not None else []),
            supervisor("sessions", "one_for_one", ()),
            ticker("sweeper", SWEEP, self._sweep),
            Child("listener", lambda: self.table.start(Listener, self, name="listener")),
            *self._admin_children(),
        ), **intensity)

    def _admin_children(self):
        """The control socket's server (whatsupctl) and the push sender, last: a crash restarts
        them alone."""
        children = []
        path = control_path(self.cfg.control.socket, self.data_dir)
        if path is not None:
            children.append(Child("control", lambda: self.table.start(ControlServer, self, path, name="control")))
        if self.cfg.push.url:
            children.append(Child("push", lambda: self.table.start(PushWorker, self.push, name="push")))
        interval = sdnotify.watchdog_interval()
        if interval is not None:  # systemd's WatchdogSec: pings from the hub (a frozen hub stops them)
            children.append(Child("sd_watchdog", lambda: self.table.start(
                Ticker, interval, lambda: sdnotify.notify("WATCHDOG=1"), name="sd_watchdog", kind="sd_watchdog")))
        return children

    def _social(self):
        """The process owning the groups, blocks and privacy tables; each (re)start reloads them."""
        loaders = {"blocks": self.blocks.open, "groups": self.groups.open, "privacy": self.presence.open,
                   "bans": lambda t: self.lifecycle.open("bans", t),
                   "retired": lambda t: self.lifecycle.open("retired", t),
                   "invites": self.registration.open, "push": self.push.devices.open}
        return self.table.start(TableStore, os.path.join(self.data_dir, "social.sqlite"), loaders,
                                name="social")

    def _prepare_data_dir(self):
        try:
            secure(self.data_dir)
            probe = os.path.join(self.data_dir, ".write-test")
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except InsecureDataDir as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"data dir {self.data_dir} is not writable: {exc.strerror or exc}") from None

    def _release(self):
        if self.link is not None:
            self.link.close()
        self.backdoor.stop()
        self.metrics.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- the tree's work --------------------------------------------------------------

    def _connection(self, sock, addr):
        """StreamServer handler: this connection's greenlet becomes its session process."""
        proc = Process(self.table, Session, (self.services, sock, addr), entity=f"{addr[0]}:{addr[1]}",
                       mailbox_max=getattr(self.cfg.mailbox, Session.kind))
        logformat.mark(proc)  # its log lines can name its user (server.log_format = "json")
        try:
            adopt(self.table, "sessions", proc)
        except ProcessDead:  # the session supervisor is restarting: refuse rather than run unsupervised
            sock.close()
            return
        proc.run_here()

    def _sweep(self):
        """Forget failed logins and registrations that are forgiven; log the summaries of
        repeated log lines that are due. (Sessions are not swept: each keeps its own deadlines in
        ``timers``, so only those that are due are woken.)"""
        for limiter in (*self.failed_logins.limiters.values(), self.accounts.registrations, *self.gate.floods.values(),
                        self.groups.pace):
            limiter.prune()
        logs.flush()

    def _maintain(self):
        for slot in self.offd.industry.slots():
            try:
                self.table.cast(slot.pid, ("maintain",))
            except ProcessDead:
                pass  # restarting; the next pass covers it

    def _root_down(self, pid, reason):
        if self._stopping or reason in NORMAL:
            return
        log.critical("the supervision tree gave up (%s): stopping the node", reason)
        self.exit_code = 1
        gevent.spawn(self.stop)

    # --- stop ---------------------------------------------------------------------------

    def stop(self):
        """Graceful stop: no new connections, sessions told and closed (within
        server.stop_sessions), then the tree in reverse (offd flushed, stores closed, within
        server.stop_timeout)."""
        if self._stopping:
            self.stopped.wait()
            return
        self._stopping = True
        sdnotify.notify("STOPPING=1")
        log.info("stopping: closing %d sessions, flushing offd", len(self.sm))
        try:
            terminate_child(self.table, self.root, "listener")
        except ProcessDead:
            pass  # the tree is already gone
        sessions = self.table.processes("session")
        for proc in sessions:
            proc.mailbox.put(("shutdown",))
        gevent.joinall([p.greenlet for p in sessions], timeout=self.cfg.server.stop_sessions)
        self.table.stop(self.root, "shutdown", timeout=self.cfg.server.stop_timeout)
        self.timers.stop()
        self._release()
        left = strays(self.table)
        if left:
            log.error("greenlets left running after stop, outside every process: %s",
                      ", ".join(repr(g) for g in left))
        log.info("stopped")
        self.stopped.set()

    def serve_forever(self):
        """Run until SIGTERM or SIGINT (or the tree gives up), then stop gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self.stop))
        self.stopped.wait()
        return self.exit_code
