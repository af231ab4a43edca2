"""Run a real whatsupd as a subprocess: for the tests, the benchmarks and the chaos tools.

The node gets its own data dir and config file, listens on a free loopback
port (``server.listen = 127.0.0.1:0``; the port is read from its log) and logs
to a file, so a test can read what the server logged and ``kill -9`` it for
real. :class:`RedisServer` runs a real ``redis-server`` the same way, and
:class:`LocalCluster` a cluster of nodes joined through it.

Every node runs with gevent's monitor thread (``MONITOR``): a callback that
holds the hub for more than 0.1 s is reported in the log as "appears to be
blocked", and :meth:`ServerProcess.blocking_reports` finds those reports, so a
test fixture can fail on them (the hub must never block).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from . import protocol
from .client import Client, parse_server
from .shell import SOCKET_NAME
from .shell.client import ShellClient

LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")
#: Tests hash thousands of passwords (production keeps scrypt_n 2**15) and register their users
#: from one address (tests of the registration limit set it).
FAST = {"accounts.scrypt_n": 1024, "auth.ip_registrations": 0}
MONITOR = {"GEVENT_MONITOR_THREAD_ENABLE": "1", "GEVENT_MAX_BLOCKING_TIME": "0.1"}
#: Cluster nodes under test notice a dead peer within about a second (production: cluster.lease).
CLUSTER_FAST = {"cluster.lease": 1.0, "cluster.block": 0.2, "cluster.timeout": 1.0, "cluster.retry_for": 10.0,
                "cluster.request_timeout": 5.0}
BLOCKED = "appears to be blocked"  # how gevent's monitor thread words its report
#: What a server may send: frame types of docs/PROTOCOL.md and the error codes of protocol.Code.
RESPONSES = frozenset({"hello", "ok", "sent", "pong", "msg", "receipt", "error", "group_info", "groups",
                       "group_event", "presence", "typing", "blocked"})
CODES = frozenset(v for k, v in vars(protocol.Code).items() if k.isupper())
#: One valid frame of each client type, the seeds the fuzzers mutate (user ``fuzzer``, target ``sink``).
FUZZ_SEEDS = (
    {"type": "hello", "ref": 1, "versions": [1]},
    {"type": "login", "ref": 2, "user": "fuzzer", "password": "pw-fuzzer"},
    {"type": "register", "ref": 3, "user": "fz", "password": "pw-fz-pw"},
    {"type": "msg", "ref": 4, "id": "f1", "to": "sink", "body": "fuzz"},
    {"type": "ack", "seq": 1},
    {"type": "read", "ref": 5, "to": "sink", "ids": ["f1"]},
    {"type": "ping", "ref": 6},
)


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.now += 5``) for the I/O-free cores."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class Recorder:
    """A process behaviour that keeps every message it receives in the list it was started with."""

    @staticmethod
    def init(proc, seen):
        return seen

    @staticmethod
    def handle_info(proc, msg, seen):
        seen.append(msg)
        return seen


def render(settings):
    """A TOML document from ``{"section.key": value}``."""
    sections = {}
    for name, value in settings.items():
        section, key = name.split(".", 1)
        sections.setdefault(section, {})[key] = value
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, str):
                value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class ServerProcess:
    def __init__(self, directory, settings=None, env=None, command=None):
        self.dir = str(directory)
        self.data_dir = os.path.join(self.dir, "data")
        self.config = os.path.join(self.dir, "whatsupd.toml")
        self.log_path = os.path.join(self.dir, "whatsupd.log")
        self.settings = {**FAST, "server.listen": "127.0.0.1:0", "server.data_dir": self.data_dir,
                         **(settings or {})}
        self.env = env
        self.command = command or [sys.executable, "-m", "whatsup.cli.whatsupd"]  # + --config PATH
        self.proc = None
        self.address = None
        self.starts = 0
        self.started_at = 0  # where the log of the current run starts

    def __repr__(self):
        return f"<ServerProcess {self.address} pid={self.proc and self.proc.pid} starts={self.starts}>"

    @property
    def server(self):
        return f"{self.address[0]}:{self.address[1]}"

    def start(self, timeout=30.0):
        if self.address is not None:  # a restart keeps the port, so clients reconnect to it
            self.settings["server.listen"] = self.server
        with open(self.config, "w") as f:
            f.write(render(self.settings))
        offset = self.started_at = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        log = open(self.log_path, "ab")
        env = {**os.environ, **MONITOR, **(self.env or {})}
        self.proc = subprocess.Popen([*self.command, "--config", self.config],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log(offset))
            if match:
                self.address = (match.group(1), int(match.group(2)))
                self.starts += 1
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"whatsupd exited with {self.proc.returncode}:\n{self.log(offset)}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"whatsupd did not start within {timeout}s:\n{self.log(offset)}")

    def log(self, offset=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def blocking_reports(self):
        """The monitor thread's reports of a blocked hub in this node's log (empty: never blocked)."""
        log = self.log()
        return [log[max(0, m.start() - 200):m.end() + 3000] for m in re.finditer(BLOCKED, log)]

    def kill(self):
        """``kill -9``: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def restart(self):
        self.kill()
        return self.start()

    def client(self, user=None, password=None, register=False, **opts):
        c = Client(self.server, **opts)
        if register:
            c.register(user, password or f"pw-{user}")
        if user is not None:
            c.login(user, password or f"pw-{user}")
        return c

    @property
    def shell_socket(self):
        return os.path.join(self.data_dir, SOCKET_NAME)

    def shell(self, timeout=60.0):
        """A client of the node's operator shell on its default Unix socket."""
        return ShellClient("unix", self.shell_socket, timeout)

    def register(self, *users):
        with self.client() as c:
            for user in users:
                c.register(user, f"pw-{user}")



def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on now (the OS's choice; a race with others is retried by callers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RedisServer:
    """A real ``redis-server`` on a free loopback port with its own dir (append-only file,
    ``appendfsync everysec`` as production would run it): for the cluster tests and tools.
    ``restart()`` keeps the port and the data; ``kill()`` is ``kill -9``."""
    BINARY = "redis-server"

    def __init__(self, directory, settings=()):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = None
        self.proc = None
        self.settings = list(settings)

    def __repr__(self):
        return f"<RedisServer {self.url} pid={self.proc and self.proc.pid}>"

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout=15.0):
        for _ in range(5):  # another process may take the free port between our probe and redis's bind
            port = self.port or free_port()
            args = [self.BINARY, "--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir,
                    "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                    "--logfile", os.path.join(self.dir, "redis.log"), "--daemonize", "no", *self.settings]
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._pong(port):
                    self.port = port
                    return self
                time.sleep(0.02)
            self.kill()
            if self.port is not None:
                break
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port}: see {self.dir}/redis.log")

    @staticmethod
    def _pong(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        """``kill -9``: what Redis had not written to its append-only file is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout=10.0):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self):
        self.kill()
        return self.start()

    def pause(self):
        """``kill -STOP``: Redis answers nobody (a partition, as its clients see it) until resume()."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


class LocalCluster:
    """``n`` real whatsupd nodes joined through ``redis`` (a RedisServer), each with its own
    data dir under ``directory``: what the cluster tests, ops/cluster.py and the benchmark start.
    ``make(settings, name=...)`` makes and starts one node (the tests' make_server); else ``env``
    is added to each node's environment."""

    def __init__(self, directory, redis, names=("a@localhost", "b@localhost", "c@localhost"), shards=12,
                 settings=None, make=None, env=None):
        from .cluster import map as cmap
        self.dir, self.redis, self.names = str(directory), redis, list(names)
        os.makedirs(self.dir, exist_ok=True)
        self.map_path = os.path.join(self.dir, "cluster.toml")
        placement = cmap.spread(self.names, shards)
        with open(self.map_path, "w") as f:
            f.write(cmap.render(redis.url, shards, {n: {"shards": s} for n, s in placement.items()}))
        self.map = cmap.load(self.map_path)
        self.settings = {**CLUSTER_FAST, **(settings or {})}
        self.make, self.env = make, env
        self.nodes = {}

    def start(self):
        for name in self.names:
            settings = {**self.settings, "server.node": name, "cluster.map": self.map_path}
            if self.make is not None:
                self.nodes[name] = self.make(settings, name=name.split("@")[0])
            else:
                d = os.path.join(self.dir, name.split("@")[0])
                os.makedirs(d, exist_ok=True)
                self.nodes[name] = ServerProcess(d, settings, self.env).start()
        return self.joined()

    def joined(self, timeout=30.0):
        """Wait until every node has seen every other one up (each logs "cluster: NAME is up"),
        in the current run of each node."""
        deadline = time.monotonic() + timeout
        for name, srv in self.nodes.items():
            for other in self.nodes:
                while other != name and f"cluster: {other} is up" not in srv.log(srv.started_at):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not see {other} up within {timeout}s:\n{srv.log()[-3000:]}")
                    time.sleep(0.05)
        return self

    def __getitem__(self, name):
        return self.nodes[name]

    def try_start(self, name, map_path, timeout=60):
        """Run whatsupd as node ``name`` with the map ``map_path``, in a data dir of its own, and
        wait for it to exit: how a node with another map is refused (a CompletedProcess)."""
        d = os.path.join(self.dir, "tried")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "whatsupd.toml")
        with open(conf, "w") as f:
            f.write(render({"server.node": name, "server.data_dir": os.path.join(d, "data"),
                            "server.listen": "127.0.0.1:0", "cluster.map": str(map_path)}))
        return subprocess.run([sys.executable, "-m", "whatsup.cli.whatsupd", "--config", conf],
                              capture_output=True, text=True, timeout=timeout)

    def home(self, user):
        return self.nodes[self.map.home(user)]

    def homed(self, node, prefix, n=1):
        """``n`` user names homed on ``node`` (prefix0, prefix1...)."""
        out, i = [], 0
        while len(out) < n:
            name = f"{prefix}{i}"
            if self.map.home(name) == node:
                out.append(name)
            i += 1
        return out

    def stop(self):
        for srv in self.nodes.values():
            srv.kill()


def exchange(server, data, expect=0, timeout=10.0):
    """Send raw bytes on a fresh connection and return the frames the server sends back.

    Our side is closed once ``expect`` frames have arrived (answers that come
    after an fsync, like ``sent``, would be lost if the session saw our
    end-of-stream first), then everything up to the server's close is read.
    Raises ProtocolError if the server's own bytes do not decode: the server
    must always speak the protocol.
    """
    sock = socket.create_connection(parse_server(server), timeout=timeout)
    decoder, frames, open_ = protocol.FrameDecoder(1 << 24), [], True
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: what it said before is still to be read
        while True:
            if open_ and len(frames) >= expect:
                open_ = False
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            for frame in decoder.feed(chunk):
                if isinstance(frame, protocol.ProtocolError):
                    raise frame
                frames.append(frame)
    finally:
        sock.close()
    return frames


def undocumented(frame):
    """Why ``frame`` is not something docs/PROTOCOL.md lets a server send (None if it is)."""
    if frame.get("type") not in RESPONSES:
        return f"unknown frame type {frame.get('type')!r}"
    if frame["type"] == "error" and frame.get("code") not in CODES:
        return f"undocumented error code {frame.get('code')!r}"
    return None


class Bystander(threading.Thread):
    """Two users chatting while something else hammers the node: their service must not suffer.

    ``sender`` sends a message every ``interval`` seconds and ``receiver``
    must get each one; ``stop()`` returns (exchanged, failures), failures
    being the reprs of whatever went wrong (an error, a lost message, a
    dropped connection).
    """

    def __init__(self, srv, sender, receiver, interval=0.05):
        super().__init__(name="bystander", daemon=True)
        self.srv, self.users, self.interval = srv, (sender, receiver), interval
        self.exchanged, self.failures = 0, []
        self._halt, self._chatting = threading.Event(), threading.Event()

    def start(self, timeout=60):
        """Start chatting and return once the first message went through (or the chat failed):
        whatever hammers the node next runs entirely while the bystanders chat, however long
        their logins take on a loaded machine."""
        super().start()
        self._chatting.wait(timeout)

    def run(self):
        sender, receiver = self.users
        try:
            with self.srv.client(sender) as a, self.srv.client(receiver) as b:
                n = 0
                while not self._halt.wait(self.interval):
                    n += 1
                    a.send(receiver, f"bystander {n}", id=f"by-{n}")
                    got = b.recv(10)
                    while got is not None and got.get("type") != "msg":
                        got = b.recv(10)
                    if got is None or got["id"] != f"by-{n}":
                        self.failures.append(f"message {n}: got {got!r}")
                        return
                    self.exchanged += 1
                    self._chatting.set()
                    while a.recv(0) is not None:  # ✓✓ receipts: read and acked
                        pass
        except Exception as exc:  # whatever it is, the fuzzed node hurt a bystander
            self.failures.append(repr(exc))
        finally:
            self._chatting.set()

    def stop(self):
        self._halt.set()
        self.join(30)
        return self.exchanged, self.failures


def splits_cleanly(data, max_frame):
    """True when ``data`` is a whole number of frames whose lengths a server accepts:
    then every bad frame in it must cost an error frame, never the connection."""
    pos = 0
    while pos + 4 <= len(data):
        (length,) = protocol.HEADER.unpack_from(data, pos)
        if not 0 < length <= max_frame:
            return False
        pos += 4 + length
    return pos == len(data)


def closed_with(client, timeout=10.0):
    """Read until the server closes ``client``'s connection; the code of the last error frame it
    sent (None if none). A reset (the server closed with the client's acks unread) is a close too."""
    last = None
    try:
        while True:
            frame = client.recv(timeout)
            if frame is None:
                raise TimeoutError(f"the server did not close the connection within {timeout}s")
            if frame["type"] == "error":
                last = frame["code"]
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            raise
    return last
