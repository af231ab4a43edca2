"""The servers a benchmark drives, the load generator processes, and where each runs.

Placement: with two or more usable cores the server gets the first one and the
load generators the rest, so neither steals the other's CPU; the output says
how they were placed. Children inherit the affinity they are started with
(threads included), which is how the server is pinned without touching its code.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile

from whatsup.testing import FAST, ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: the whatsupd configuration benchmarked: the defaults (✓ only after the fsync) with the tests'
#: cheaper password hashing, so that logging in 10,000 users measures the server, not scrypt; and
#: since a few connections from 127.0.0.1 stand in for many devices, limits per address and a
#: per-connection message rate that never binds (the token bucket still runs on every msg)
SERVER_SETTINGS = {**FAST, "server.max_connections_per_ip": 50_000, "auth.ip_failures": 0,
                   "server.unauthenticated_per_ip": 50_000, "server.unauthenticated_per_prefix": 50_000,
                   "auth.checks_per_ip": 50_000, "auth.checks_per_prefix": 50_000,
                   "auth.max_waiting": 50_000, "auth.prefix_failures": 0, "auth.ip_registrations": 0,
                   "ratelimit.msg": 1e6, "ratelimit.ack": 1e6}

ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


class Placement:
    def __init__(self):
        cpus = sorted(os.sched_getaffinity(0))
        self.shared = len(cpus) < 2
        self.server = set(cpus[:1]) if not self.shared else set(cpus)
        self.load = set(cpus[1:]) if not self.shared else set(cpus)

    def __str__(self):
        if self.shared:
            return f"server and load generator share cpu {sorted(self.server)} (one core only)"
        return f"server pinned to cpu {sorted(self.server)}, load generators to cpu {sorted(self.load)}"

    def as_dict(self):
        return {"server_cpus": sorted(self.server), "load_cpus": sorted(self.load), "shared": self.shared}


@contextlib.contextmanager
def pinned(cpus):
    """Processes started inside the block inherit ``cpus``."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    """User + system CPU time of process ``pid``, all its threads: a figure the noise of a shared
    machine barely moves, unlike wall-clock rates."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores_busy_seconds(cpus):
    """CPU time the kernel counted as busy on ``cpus`` (everyone's), from /proc/stat."""
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
                busy += user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


class Whatsup:
    """A real whatsupd (whatsup.testing.ServerProcess) with a fresh data dir."""
    name = "whatsup"

    def __init__(self, cpus, settings, env=None):
        self.cpus, self.settings = cpus, settings
        self._tmp = tempfile.TemporaryDirectory(prefix="whatsup-bench-")
        self.server = ServerProcess(self._tmp.name, settings, env)

    def __enter__(self):
        with pinned(self.cpus):
            self.server.start()
        self.address, self.pid = self.server.address, self.server.proc.pid
        return self

    def __exit__(self, *exc):
        code = self.server.stop()
        self._tmp.cleanup()
        if code not in (0, None) and exc[0] is None:
            raise RuntimeError(f"whatsupd exited with {code}:\n{self.server.log()[-2000:]}")


class Baseline:
    """One of the baseline servers of this package, as a subprocess."""

    def __init__(self, module, cpus):
        self.name, self.cpus = module, cpus

    def __enter__(self):
        with pinned(self.cpus):
            self.proc = subprocess.Popen([sys.executable, "-m", f"ops.bench.{self.name}"], cwd=ROOT,
                                         env=ENV, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"baseline {self.name} did not start: {line!r}")
        host, _, port = line.split()[-1].rpartition(":")
        self.address, self.pid = (host, int(port)), self.proc.pid
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Workers:
    """``n`` load generator processes; ``call`` sends each its command and returns the answers."""

    def __init__(self, n, cpus):
        self.n, self.cpus = n, cpus

    def __enter__(self):
        with pinned(self.cpus):
            self.procs = [subprocess.Popen([sys.executable, "-m", "ops.bench.loadgen"], cwd=ROOT, env=ENV,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                          for _ in range(self.n)]
        return self

    def call(self, commands):
        """One command per worker (a list), or the same dict for all."""
        if isinstance(commands, dict):
            commands = [commands] * self.n
        for proc, cmd in zip(self.procs, commands):
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
        answers = [json.loads(proc.stdout.readline() or '{"ok": false, "error": "load generator died"}')
                   for proc, _ in zip(self.procs, commands)]
        failed = [a["error"] for a in answers if not a.pop("ok")]
        if failed:
            raise RuntimeError(f"load generator failed: {failed[0]}")
        return answers

    def __exit__(self, *exc):
        for proc in self.procs:
            try:
                proc.stdin.write('{"op": "close"}\n')
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
