"""The delivery ledger under chaos: kill -9 the node and drop connections while users chat.

Every device of every user is a thread driving a real :class:`whatsup.client.Client`
the way a phone would (``--devices N``: each user has a primary and N-1 companions,
linked at the start with link codes, docs/PROTOCOL.md "Devices"): it pipelines messages, keeps the ones without a ✓ (``sent``) in an
outbox and retransmits them with the *same* id after every reconnect (the
server deduplicates), and keeps its last delivered seq across reconnects
(``Client(last_seq=...)``) because the server may deliver an item again, with
the same seq, when the device's ack was not durable before a crash.

Meanwhile the main thread SIGKILLs the node at random moments and restarts it
on the same data dir and port, and every client drops its connection now and
then without a goodbye, and a companion stays away for a while (``--away`` seconds
at most) after a drop, so a stream reaches some devices online and others offline.
At the end nothing is killed any more: clients
retransmit what still lacks a ✓ and drain until every ✓'d message has arrived
and its ✓✓ (``delivered`` receipt) has reached its sender.

The ledger then checks, for every message that got ✓:

* it was shown exactly once on every device of its recipient, and on every other
  device of its sender (the self-synced copy) (lost / duplicates);
* per conversation (sending device -> recipient, on each viewing device) in the order it was sent
  (out of order);
* its sending device got the ``delivered`` receipt (receipts missing).

It prints the tallies and exits 1 on any violation, 2 when the node logged an
unhandled exception. ``tests/test_chaos.py`` runs a short version.

With ``--nodes N`` (N > 1) the same ledger runs across a cluster of N nodes joined
through a redis-server of its own (whatsup/cluster/): every (re)connect picks a
random node, and each kill takes a random node, except every ``--redis-every``-th,
which takes Redis itself (``kill -9``: it loses what its append-only file had not
written yet).

    python3 ops/chaos.py --users 20 --duration 180 --kills 25 [--devices 3]
    python3 ops/chaos.py --nodes 3 --users 12 --duration 60 --kills 10
"""
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from whatsup.client import Client, Closed, Seen, ServerError  # noqa: E402
from whatsup.testing import LocalCluster, RedisServer, ServerProcess  # noqa: E402

NETWORK_ERRORS = (OSError, Closed, TimeoutError, ServerError)
RETRYABLE = {"store_failed", "queue_full", "shutting_down", "internal"}


class Device(threading.Thread):
    """One device of a user: sends, receives, acks, reconnects, and writes down what it saw.
    ``credential`` is (device id, token) for a companion, None for the primary."""

    def __init__(self, user, peers, servers, rate, drop_rate, inflight, seed, stop, quiet, credential=None,
                 away=0.0):
        self.dev = credential[0] if credential else 0
        self.name_ = f"{user}.{self.dev}"
        super().__init__(name=f"device-{self.name_}", daemon=True)
        self.user, self.peers, self.servers = user, peers, servers  # a random one at each connect
        self.credential, self.away, self.back = credential, away, 0.0
        self.rate, self.drop_rate, self.inflight = rate, drop_rate, inflight
        self.rng = random.Random(seed)
        self.stop, self.quiet = stop, quiet  # quiet: stop sending new messages, keep draining
        self.last_seq = 0
        self.seen = Seen()                         # (group, from, id) shown, across reconnects
        self.outbox = collections.OrderedDict()   # id -> (to, body): no ✓ yet
        self.counter = collections.Counter()      # per recipient: messages created
        # the ledger
        self.sent = []                             # (id, to, k) in creation order
        self.acked = set()                         # ids that got ✓
        self.shown = []                            # (from, id, body) handed to the app
        self.receipts = collections.Counter()      # id -> delivered receipts received
        self.errors = collections.Counter()
        self.connects = self.drops = 0
        self.crashed = None
        self.client = None
        self.refs = {}

    # --- connection ------------------------------------------------------------

    def _connect(self):
        while not self.stop.is_set():
            if time.monotonic() < self.back and not self.quiet.is_set():
                time.sleep(0.05)  # this device is away (offline) for now
                continue
            try:
                c = Client(self.rng.choice(self.servers), timeout=3.0, last_seq=self.last_seq, seen=self.seen)
                if self.credential:
                    c.login(self.user, device=self.credential[0], token=self.credential[1])
                else:
                    c.login(self.user, f"pw-{self.user}")
            except NETWORK_ERRORS:
                time.sleep(0.05)
                continue
            self.client, self.refs = c, {}
            self.connects += 1
            for mid, (to, body) in list(self.outbox.items()):  # retransmit, same ids, same order
                self._transmit(mid, to, body)
            return True
        return False

    def _drop(self):
        """Lose the connection the way a phone does: no ack flush, no goodbye."""
        c, self.client = self.client, None
        if c is not None:
            try:
                c.sock.close()
            except OSError:
                pass

    def _transmit(self, mid, to, body):
        frame = self.client.send_nowait(to, body, id=mid)
        self.refs[frame["ref"]] = mid

    # --- the loop --------------------------------------------------------------------

    def run(self):
        try:
            self._run()
        except BaseException as exc:  # the ledger must hear of it: counted as device_crashes
            self.crashed = repr(exc)
            self._drop()

    def _run(self):
        next_send = time.monotonic()
        while not self.stop.is_set():
            if self.client is None and not self._connect():
                break
            try:
                now = time.monotonic()
                if not self.quiet.is_set() and now >= next_send and len(self.outbox) < self.inflight:
                    self._new_message()
                    next_send = now + self.rng.expovariate(self.rate)
                if self.rng.random() < self.drop_rate * 0.02:
                    self.drops += 1
                    self._drop()
                    if self.credential:
                        self.back = time.monotonic() + self.rng.uniform(0, self.away)
                    continue
                frame = self.client.recv(0.02)
                while frame is not None:
                    self._handle(frame)
                    frame = self.client.recv(0) if len(self.client.inbox) else None
            except NETWORK_ERRORS:
                self._drop()
        self._drop()

    def _new_message(self):
        to = self.rng.choice(self.peers)
        self.counter[to] += 1
        k = self.counter[to]
        mid = f"{self.name_}.{to}.{k}"
        body = f"{self.name_}>{to}#{k}"
        self.sent.append((mid, to, k))
        self.outbox[mid] = (to, body)
        self._transmit(mid, to, body)

    def _handle(self, frame):
        kind = frame.get("type")
        if kind == "msg":
            self.last_seq = self.client.last_seq
            self.shown.append((frame["from"], frame["id"], frame["body"], frame["seq"]))
        elif kind == "receipt":
            self.last_seq = self.client.last_seq
            if frame["status"] == "delivered":
                for mid in frame["ids"]:
                    self.receipts[mid] += 1
        elif kind == "sent":
            mid = self.refs.pop(frame["ref"], frame.get("id"))
            self.outbox.pop(mid, None)
            self.acked.add(mid)
        elif kind == "error":
            self.errors[frame.get("code")] += 1
            mid = self.refs.pop(frame.get("ref"), None)
            if mid in self.outbox and frame.get("code") in RETRYABLE:
                to, body = self.outbox[mid]
                self._transmit(mid, to, body)  # a real app retries later; order is kept by the id
            elif mid in self.outbox:
                raise RuntimeError(f"{self.name_}: message {mid} refused for good: {frame}")

    def settled(self, expected_receipts):
        return not self.outbox and all(self.receipts[m] for m in expected_receipts)


def viewers(sender, to, by_user):
    """The devices that must show a message ``sender`` (a Device) sent to ``to``: every device
    of ``to`` and the sender's other devices (the self-synced copy)."""
    return {v for v in by_user[to]} | {v for v in by_user[sender.user] if v is not sender}


def parse(mid):
    """(origin device name, recipient, k) of a message id ``user.dev.to.k``."""
    user, dev, to, k = mid.split(".")
    return f"{user}.{dev}", to, int(k)


def audit(devices):
    """Compare what got ✓ with what the applications were shown; returns the tallies."""
    t = collections.Counter()
    by_user = collections.defaultdict(list)
    for d in devices:
        by_user[d.user].append(d)
    order = {}  # (origin device, recipient, viewing device) -> ks in the order shown
    shown = collections.Counter()
    for d in devices:
        t["delivered"] += len(d.shown)
        for sender, mid, body, _ in d.shown:
            shown[(d, mid)] += 1
            origin, to, k = parse(mid)
            if shown[(d, mid)] == 1:
                order.setdefault((origin, to, d.name_), []).append(k)
            if body != f"{origin}>{to}#{k}" or not origin.startswith(sender + ".") or d.user not in (to, sender):
                t["corrupted"] += 1
    t["duplicates"] = sum(n - 1 for n in shown.values() if n > 1)
    examples = [f"duplicate {mid} on {d.name_} seqs={[s for _, m, _, s in d.shown if m == mid]}"
                for (d, mid), n in shown.items() if n > 1]
    for d in devices:
        t["sent"] += len(d.sent)
        t["acked"] += len(d.acked)
        t["unacked"] += len(d.outbox)
        t["connects"] += d.connects
        if d.crashed:
            t["device_crashes"] += 1
            examples.insert(0, f"device {d.name_} crashed: {d.crashed}")  # first: what follows may be its echo
        t["drops"] += d.drops
        for code, n in d.errors.items():
            t["error:" + code] += n
        for mid, to, _ in d.sent:
            got = {v: shown[(v, mid)] for v in viewers(d, to, by_user)}
            if mid in d.acked:
                lost = [v.name_ for v, n in got.items() if not n]
                t["lost"] += len(lost)
                examples += [f"lost {mid} on {v}" for v in lost]
            elif any(got.values()):
                t["delivered_without_ack"] += 1
            if any(shown[(v, mid)] for v in by_user[to]) and not d.receipts[mid]:
                t["receipts_missing"] += 1
            t["receipts_duplicated"] += max(0, d.receipts[mid] - 1)
        t["receipts"] += sum(1 for m in d.receipts if d.receipts[m])
    for conversation, ks in order.items():
        wrong = sum(1 for a, b in zip(ks, ks[1:]) if b < a)
        t["out_of_order"] += wrong
        if wrong:
            examples.append(f"out of order {conversation}: {[b for a, b in zip(ks, ks[1:]) if b < a][:5]} "
                            f"came after a later one ({ks[:40]})")
    t["conversations"] = len(order)
    for key in FAILURES:
        t[key] = t[key]  # printed even when zero
    return t, examples


def complete(devices, by_user, acked):
    """Every ✓'d message is shown on every device that must show it."""
    shown = {d: {m for _, m, _, _ in list(d.shown)} for d in devices}
    return all(mid in shown[v] for d in devices for mid, to, _ in list(d.sent) if mid in acked
               for v in viewers(d, to, by_user))


def link_companions(srv, names, n):
    """{user: [(device id, token)...]}: ``n`` companions linked to each user with link codes."""
    linked = {}
    for user in names:
        with srv.client(user) as primary, Client(srv.server) as new:
            linked[user] = [new.link(user, primary.link_code(), f"companion{i}") for i in range(n)]
    return linked


FAILURES = ("lost", "duplicates", "out_of_order", "receipts_missing", "corrupted", "unacked",
            "delivered_without_ack", "device_crashes")


class Single:
    """One node: each kill takes it."""

    def __init__(self, directory, settings):
        os.makedirs(directory, exist_ok=True)
        self.srv = ServerProcess(directory, settings).start()
        self.servers = [self.srv.server]

    def kill(self, rng):
        self.srv.kill()
        return self.srv.start

    def stop(self):
        self.srv.stop()
        return self.srv.log()


class Cluster:
    """``nodes`` nodes and a redis-server: each kill takes a random node, every ``redis_every``-th Redis."""

    def __init__(self, directory, settings, nodes, redis_every):
        self.redis_every, self.kills, self.redis_kills = redis_every, 0, 0
        self.redis = RedisServer(os.path.join(directory, "redis")).start()
        names = [f"n{i}@localhost" for i in range(nodes)]
        self.cluster = LocalCluster(directory, self.redis, names, 12, settings)
        try:
            self.cluster.start()
        except BaseException:  # nothing left running
            self.cluster.stop()
            self.redis.kill()
            raise
        self.srv = self.cluster[names[0]]
        self.servers = [s.server for s in self.cluster.nodes.values()]

    def kill(self, rng):
        self.kills += 1
        if self.redis_every and not self.kills % self.redis_every:
            victim = self.redis
            self.redis_kills += 1
        else:
            victim = rng.choice(list(self.cluster.nodes.values()))
        victim.kill()
        return victim.start

    def stop(self):
        logs = "".join(s.log() for s in self.cluster.nodes.values())
        for s in self.cluster.nodes.values():
            s.stop()
        self.redis.stop()
        return logs


def run_chaos(directory, users, duration, kills, rate, drop_rate, inflight, seed, settle, settings, echo,
              devices_per_user=1, away=2.0, nodes=1, redis_every=2):
    rng = random.Random(seed)
    target = Single(directory, settings) if nodes <= 1 else Cluster(directory, settings, nodes, redis_every)
    names = [f"u{i:02d}" for i in range(users)]
    target.srv.register(*names)
    linked = link_companions(target.srv, names, devices_per_user - 1)
    stop, quiet = threading.Event(), threading.Event()
    devices = [Device(u, [p for p in names if p != u] or [u], target.servers, rate / devices_per_user, drop_rate,
                      inflight, rng.random(), stop, quiet, credential, away)
               for u in names for credential in [None] + linked[u]]
    by_user = collections.defaultdict(list)
    for d in devices:
        by_user[d.user].append(d)
    for d in devices:
        d.start()
    started = time.monotonic()
    killed = 0
    try:
        # kill at random moments spread over the run (uniform gaps around the mean)
        gap = duration / (kills + 1)
        for _ in range(kills):
            time.sleep(rng.uniform(0.3 * gap, 1.7 * gap) if gap > 0 else 0)
            restart = target.kill(rng)
            killed += 1
            time.sleep(rng.uniform(0, 0.3))
            restart()
            echo(f"kill {killed}/{kills} of {restart.__self__!r} at {time.monotonic() - started:.1f}s, restarted")
        time.sleep(max(0.0, duration - (time.monotonic() - started)))
        quiet.set()
        time.sleep(0.2)  # a device may be creating its last message
        expected = {d: [m for m, *_ in list(d.sent)] for d in devices}
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            acked = set().union(*(d.acked.copy() for d in devices))  # copies: the devices still run
            if (all(d.settled([m for m in expected[d] if m in acked]) for d in devices)
                    and complete(devices, by_user, acked)):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for d in devices:
            d.join(10)
        log = target.stop()
    tally, examples = audit(devices)
    for line in examples[:20]:
        echo(line)
    tally["examples"] = examples[:10]
    tally["kills"] = killed
    tally["redis_kills"] = getattr(target, "redis_kills", 0)
    tally["seconds"] = round(time.monotonic() - started, 1)
    tally["server_tracebacks"] = log.count("Traceback")
    return tally, log


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--users", default=12, show_default=True, help="simulated users")
@click.option("--devices", "devices_per_user", default=1, show_default=True,
              help="devices per user: the primary and N-1 linked companions")
@click.option("--away", default=2.0, show_default=True,
              help="seconds a companion stays offline after a drop, at most")
@click.option("--duration", default=60.0, show_default=True, help="seconds of chaos before settling")
@click.option("--kills", default=20, show_default=True, help="SIGKILL + restart of the node during the run")
@click.option("--rate", default=20.0, show_default=True, help="new messages per second per user")
@click.option("--drop-rate", default=0.5, show_default=True, help="connection drops per second per user")
@click.option("--inflight", default=32, show_default=True, help="messages without ✓ per user at most")
@click.option("--seed", default=None, type=int, help="random seed (printed; reuse it to replay a run)")
@click.option("--settle", default=60.0, show_default=True, help="seconds allowed to drain after the chaos")
@click.option("--shards", default=2, show_default=True, help="offd.shards of the node")
@click.option("--segment-bytes", default=65536, show_default=True,
              help="offd.segment_bytes (small, so compaction runs during the chaos)")
@click.option("--nodes", default=1, show_default=True, help="nodes; more than one makes a cluster through a "
              "redis-server of its own, and kills take Redis too")
@click.option("--redis-every", default=2, show_default=True, help="with --nodes: every Nth kill takes Redis "
              "(0: never)")
@click.option("--dir", "directory", default=None, help="work dir (a temporary one by default; kept on failure)")
@click.option("--json", "as_json", is_flag=True, help="print the tallies as one JSON object")
def main(users, devices_per_user, away, duration, kills, rate, drop_rate, inflight, seed, settle, shards,
         segment_bytes, nodes, redis_every, directory, as_json):
    """Chat under kill -9 and dropped connections, then audit the delivery ledger."""
    seed = random.randrange(2 ** 32) if seed is None else seed
    directory = directory or tempfile.mkdtemp(prefix="whatsup-chaos-")
    settings = {"offd.shards": shards, "offd.segment_bytes": segment_bytes,
                "offd.maintenance_interval": 0.5, "protocol.idle_timeout": 30.0}
    echo = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    echo(f"chaos: seed={seed} dir={directory}")
    tally, log = run_chaos(directory, users, duration, kills, rate, drop_rate, inflight, seed,
                           settle, settings, echo, devices_per_user, away, nodes, redis_every)
    tally["seed"] = seed
    bad = {k: tally[k] for k in FAILURES if tally[k]}
    if as_json:
        click.echo(json.dumps(dict(sorted(tally.items()))))
    else:
        for key in sorted(k for k in tally if k != "examples"):  # the examples were echoed above
            click.echo(f"{key:>24} {tally[key]}")
    if tally["server_tracebacks"]:
        echo(f"the node logged {tally['server_tracebacks']} traceback(s); see the whatsupd.log files in {directory}")
        sys.exit(2)
    if bad:
        echo(f"FAILED: {bad}; data and log kept in {directory}")
        sys.exit(1)
    echo("ok: every ✓'d message delivered exactly once to every device, in order, with its ✓✓")


if __name__ == "__main__":
    main()
