"""Figures of the offd spool and the dedup window: memory per queued group copy and per
sender's window, the longest hub stall during maintenance, RSS under a big-group flood.

    python3 -m ops.offd_figures copies  [--members 1024 --messages 2000]
    python3 -m ops.offd_figures dedup   [--senders 10000 --ids 4096]
    python3 -m ops.offd_figures stall   [--users 10000 --per-user 120]
    python3 -m ops.offd_figures flood   [--members 1024 --messages 2000]
    python3 -m ops.offd_figures devices [--devices 1 4 --users 10000 --online 500 --items 20]
    python3 -m ops.offd_figures receipts [--devices 1 4 --messages 500]

``copies``, ``dedup`` and ``stall`` run the real Spool and Router in this process (real
segment files in a temporary directory, the router's collaborators replaced by inert
stand-ins: no sessions, every user exists); ``stall`` measures the hub's lateness with a
greenlet that asks to wake every millisecond while maintenance runs, on a young spool and
again right after a restart (recovery plus the dedup refill). ``flood`` starts a real
whatsupd (loopback, temporary data dir, stopped at the end) with offline members and
reports its RSS growth. Each prints one line per figure; all are bounded in time.
"""
import argparse
import collections
import gc
import glob
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import gevent

from whatsup.store.offd.spool import Spool
from whatsup.protocol import PRIMARY, Template
from whatsup.routing.router import Router
from whatsup.observe.watchdog import run_queue_wait


def rss_mb(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Inert:
    """The router's collaborators it does not need here: nobody online, everyone exists."""

    def __init__(self, spool):
        self.spool_ = spool
        self.industry = [0]

    def spool(self, user):
        return self.spool_

    current = spool

    @property
    def spools(self):
        return [self.spool_]

    def send(self, *a):
        pass

    notify = send

    @staticmethod
    def lookup(user):
        return None

    @staticmethod
    def exists(user):
        return True

    @staticmethod
    def blocks(a, b):
        return False

    @staticmethod
    def devices(user):
        return (PRIMARY,)

    @staticmethod
    def pids(user):
        return ()


def spool_and_router(directory, options, window):
    """An open Spool and the Router it calls back (compaction carries the router's dedup ids)."""
    routers = []
    sp = Spool(directory, *options, carry=lambda sender, hs: routers[0].dedup.pick(sender, hs))
    sp.remember = window
    sp.open()
    inert = _Inert(sp)
    routers.append(Router(inert, inert, inert, inert, inert, window, inert))
    routers[0].shard_up(sp, False)
    return sp, routers[0]


def copies(args):
    """RSS per queued group copy: ``messages`` to ``members`` offline members, as Groups queues them."""
    with tempfile.TemporaryDirectory(prefix="offd-copies-") as d:
        sp = Spool(d, 64 << 20, 10 ** 7, 30.0).open()
        members = [f"member{i:04d}" for i in range(args.members)]
        before = rss_mb()
        for n in range(args.messages):
            t = Template({"type": "msg", "from": "sender", "group": "g0123456789abcdef", "id": f"id-{n:08d}",
                          "body": "x" * args.body})
            if hasattr(sp, "put_group"):
                sp.put_group(members, "g0123456789abcdef", "sender", f"id-{n:08d}", t, None)
            else:  # the per-member P records of older nodes
                for u in members:
                    sp.put(u, "gmsg", t, sender="sender", cid=f"id-{n:08d}")
            if not n % 50:
                sp.flush()
        sp.flush()
        grown = rss_mb() - before
        n = args.members * args.messages
        print(f"copies: {n} queued group copies ({args.messages} msgs x {args.members} members, body "
              f"{args.body} B): RSS +{grown:.1f} MB = {grown * 2 ** 20 / n:.1f} bytes per copy")
        sp.close()


def dedup(args):
    """RSS per sender of full dedup windows."""
    with tempfile.TemporaryDirectory(prefix="offd-dedup-") as d:
        sp, router = spool_and_router(d, (64 << 20, 10 ** 7, 30.0), args.ids)
        before = rss_mb()
        for s in range(args.senders):
            sender = f"user{s:05d}"
            for i in range(args.ids):
                cid = f"{s:05d}-{i:06d}-0123456789abcdef"
                pending = router.track(sender, cid, "someone", ts=1_700_000_000_000 + i)
                router.durable(sender, cid, pending, None)
        grown = rss_mb() - before
        print(f"dedup: {args.senders} senders x {args.ids} ids: RSS +{grown:.1f} MB = "
              f"{grown * 2 ** 20 / args.senders / 1024:.1f} KiB per sender with a full window "
              f"({grown * 2 ** 20 / args.senders / args.ids:.1f} bytes per id)")
        sp.close()


class Lateness:
    """A greenlet that sleeps 1 ms at a time and keeps the worst overshoot: the hub's longest
    stall, and the same less the time the hub thread waited for a CPU meanwhile (on a loaded
    machine the hub also waits on the run queue: whatsup/observe/watchdog.py)."""

    def __init__(self):
        self.worst = self.blocked = self.gc = 0.0
        self.running, self._gc_start = True, None
        self.tid = threading.get_native_id()
        gc.callbacks.append(self._collection)
        self.g = gevent.spawn(self._run)
        gevent.sleep(0)  # it is asleep in its timer before the measured work starts

    def _collection(self, phase, info):
        """The longest full collection of the cyclic GC meanwhile (it holds the GIL throughout)."""
        if info["generation"] == 2:
            if phase == "start":
                self._gc_start = time.perf_counter()
            elif self._gc_start is not None:
                self.gc = max(self.gc, time.perf_counter() - self._gc_start)

    def _run(self):
        while self.running:
            t, w = time.perf_counter(), run_queue_wait(self.tid) or 0.0
            gevent.sleep(0.001)
            late = time.perf_counter() - t - 0.001
            self.worst = max(self.worst, late)
            self.blocked = max(self.blocked, late - ((run_queue_wait(self.tid) or 0.0) - w))

    def stop(self):
        self.running = False
        self.g.join()
        gc.callbacks.remove(self._collection)
        return (f"{self.worst * 1000:.1f} ms ({self.blocked * 1000:.1f} ms not waiting for a CPU; "
                f"longest full GC {self.gc * 1000:.0f} ms)")


def fill(sp, router, users, per_user, acked_share):
    names = [f"user{i:05d}" for i in range(users)]
    for r in range(per_user):
        for i, to in enumerate(names):
            sender = names[(i * 7 + r) % users]
            router.message(sender, None, 0, f"{sender}-{to}-{r}", to, "hello there, how are you " * 2)
        if not r % 10:
            sp.flush()
    sp.flush()
    for to in names:  # each device acks its oldest messages
        sent = sp.next_batch(to, PRIMARY, int(per_user * acked_share))
        if sent:
            router.acked(to, PRIMARY, sp, sent[-1].seq)
    sp.flush()
    gevent.sleep(0.2)


def timed_maintain(sp):
    probe = Lateness()
    t = time.perf_counter()
    sp.maintain()
    sp.flush()
    took = time.perf_counter() - t
    return probe.stop(), took


def stall(args):
    with tempfile.TemporaryDirectory(prefix="offd-stall-") as d:
        opts = (args.segment_mb << 20, 10 ** 6, 30.0)
        sp, router = spool_and_router(d, opts, args.window)
        t = time.perf_counter()
        fill(sp, router, args.users, args.per_user, args.acked)
        print(f"stall: filled {args.users} users x {args.per_user} msgs in {time.perf_counter() - t:.1f} s; "
              f"queued {sp.queued()}, segments {sp.stats()['segments']}, RSS {rss_mb():.0f} MB")
        worst, took = timed_maintain(sp)
        print(f"stall: young spool: maintenance pass {took * 1000:.0f} ms, longest hub stall {worst} "
              f"(moved {sp.stats().get('compacted_items', 0)}, carried ids {sp.stats().get('carried_ids', 0)})")
        worst, took = timed_maintain(sp)
        print(f"stall: next pass (nothing new): {took * 1000:.0f} ms, longest hub stall {worst}")
        sp.close()
        probe = Lateness()
        t = time.perf_counter()
        sp, router = spool_and_router(d, opts, args.window)
        gc.freeze()  # as whatsupd does once started
        took = time.perf_counter() - t
        worst = probe.stop()
        print(f"stall: restart: recovery + dedup refill {took * 1000:.0f} ms, longest hub stall {worst}; "
              f"queued {sp.queued()}")
        worst, took = timed_maintain(sp)  # compacts what recovery found
        fill(sp, router, args.users, 2, 0.0)
        worst2, took2 = timed_maintain(sp)
        print(f"stall: after restart: maintenance passes {took * 1000:.0f} ms, longest hub stall {worst}; "
              f"after new traffic {took2 * 1000:.0f} ms, longest hub stall {worst2}")
        sp.close()


def flood(args):
    """A real whatsupd: ``messages`` group messages to ``members`` offline members; its RSS growth."""
    from whatsup.testing import ServerProcess
    with tempfile.TemporaryDirectory(prefix="offd-flood-") as d:
        server = ServerProcess(d).start()
        try:
            members = [f"fm{i:04d}" for i in range(args.members - 1)]  # and the flooder
            with server.client() as c:
                for u in ["flooder"] + members:
                    c.register(u, f"pw-{u}")
            with server.client("flooder") as c:
                gid = c.group_create("flood", members)
                time.sleep(1.0)
                before = rss_mb(server.proc.pid)
                t, acked, peak = time.monotonic(), 0, before
                for n in range(args.messages):
                    c.send_nowait(None, "x" * args.body, group=gid)
                    while n - acked >= 256:
                        f = c.recv(30)
                        if f is None:
                            raise SystemExit("flood: no ✓ for 30 s")
                        acked += f["type"] == "sent"
                    if not n % 100:
                        peak = max(peak, rss_mb(server.proc.pid))
                while acked < args.messages:
                    f = c.recv(60)
                    if f is None:
                        break
                    acked += f["type"] == "sent"
                took = time.monotonic() - t
                after = rss_mb(server.proc.pid)
            print(f"flood: {args.messages} msgs x {args.members}-member group (all offline but the sender) in {took:.1f} s, {acked} ✓: "
                  f"RSS {before:.0f} -> {after:.0f} MB (peak {max(peak, after):.0f}): +{after - before:.0f} MB")
        finally:
            server.stop()


def devices(args):
    """Memory per queued item and per connection with 1 and with N devices per user.

    In this process: a real Spool, ``users`` offline users with ``--items`` items each, every
    device of every user at its own place (the first half of the companions acked half).
    Then a real whatsupd: every device of ``--online`` users connected and idle (RSS per
    connection), then ``--items`` messages queued for each of them offline (RSS per item)."""
    from whatsup.client import Client
    from whatsup.testing import ServerProcess
    if len(args.devices) > 1:  # one process per count: RSS freed by one run would hide the next one's
        for n in args.devices:
            subprocess.run([sys.executable, "-m", "ops.offd_figures", "devices", "--devices", str(n), "--users",
                            str(args.users), "--items", str(args.items), "--online", str(args.online),
                            "--body", str(args.body)], check=True)
        return
    for n in args.devices:
        linked = tuple(range(n))
        with tempfile.TemporaryDirectory(prefix="offd-devices-") as d:
            sp = Spool(d, 64 << 20, 10 ** 7, 30.0, devices=lambda user: linked).open()
            gc.collect()
            before = rss_mb()
            names = [f"user{i:05d}" for i in range(args.users)]
            for r in range(args.items):
                for to in names:
                    sp.put(to, "msg", {"type": "msg", "from": "someone", "id": f"{to}-{r}", "body": "x" * args.body})
                if not r % 10:
                    sp.flush()
            for to in names:
                for device in linked[1:1 + n // 2]:
                    sent = sp.next_batch(to, device, args.items // 2)
                    sp.release(sp.ack(to, device, sent[-1].seq))
            sp.flush()
            gc.collect()
            grown = rss_mb() - before
            items = sp.queued()
            print(f"devices: {n} device(s) per user, spool in process: {items} queued items for {args.users} "
                  f"users: RSS +{grown:.1f} MB = {grown * 2 ** 20 / items:.0f} bytes per queued item "
                  f"(body {args.body} B)")
            sp.close()
    for n in args.devices:
        with tempfile.TemporaryDirectory(prefix="offd-devices-node-") as d:
            server = ServerProcess(d, {"accounts.scrypt_n": 2, "devices.max_companions": max(args.devices),
                                       "ratelimit.link": 0, "ratelimit.msg": 0,
                                       "server.max_connections_per_ip": 100_000,
                                       "server.unauthenticated_per_ip": 100_000}).start()
            clients = []
            try:
                names = [f"on{i:05d}" for i in range(args.online)]
                creds = {}
                with server.client() as c:
                    for u in names:
                        c.register(u, f"pw-{u}")
                for u in names:
                    with server.client(u) as primary, Client(server.server) as new:
                        creds[u] = [new.link(u, primary.link_code(), f"c{i}") for i in range(n - 1)]
                time.sleep(1.0)
                before = rss_mb(server.proc.pid)
                for u in names:
                    clients.append(server.client(u))
                    for device, token in creds[u]:
                        c = Client(server.server)
                        c.login(u, device=device, token=token)
                        clients.append(c)
                time.sleep(1.0)
                conns = rss_mb(server.proc.pid)
                for c in clients:
                    c.close()
                clients = []
                time.sleep(1.0)
                idle = rss_mb(server.proc.pid)
                with server.client() as c:
                    c.register("sender", "pw-sender")
                with server.client("sender") as c:
                    got = 0
                    for r in range(args.items):
                        for u in names:
                            c.send_nowait(u, "x" * args.body, id=f"{u}-{r}")
                        got += sum(f["type"] == "sent" for f in c.drain(0.2))
                    while got < args.items * args.online:
                        f = c.recv(30)
                        if f is None:
                            break
                        got += f["type"] == "sent"
                time.sleep(1.0)
                queued = rss_mb(server.proc.pid)
                print(f"devices: {n} device(s) per user, real node: {len(names) * n} idle connections "
                      f"RSS +{conns - before:.1f} MB = {(conns - before) * 1024 / (len(names) * n):.1f} KiB per "
                      f"connection; {got} queued items for them offline: RSS +{queued - idle:.1f} MB = "
                      f"{(queued - idle) * 2 ** 20 / max(got, 1):.0f} bytes per item (body {args.body} B)")
            finally:
                for c in clients:
                    c.close()
                server.stop()


def receipts(args):
    """offd records written per message, and receipts the sender gets, with 1 and N devices per
    recipient (every device online and acking), then the same after an ``info`` per message:
    ✓✓ is one receipt whatever the device count, and message info (docs/PROTOCOL.md,
    "Devices") is answered from RAM, so it writes nothing. A real whatsupd; its segment
    files are scanned once it stopped."""
    from whatsup.client import Client
    from whatsup.store.offd import record
    from whatsup.testing import ServerProcess
    for n in args.devices:
        with tempfile.TemporaryDirectory(prefix="offd-receipts-") as d:
            server = ServerProcess(d, {"accounts.scrypt_n": 2, "devices.max_companions": max(args.devices),
                                       "ratelimit.link": 0, "ratelimit.msg": 0, "offd.shards": 1}).start()
            clients = []
            try:
                server.register("alice", "bob")
                with server.client("bob") as primary:
                    creds = [Client(server.server).link("bob", primary.link_code(), f"c{i}") for i in range(n - 1)]
                clients = [server.client("alice"), server.client("bob")]
                for device, token in creds:
                    clients.append(Client(server.server))
                    clients[-1].login("bob", device=device, token=token)
                alice, devices = clients[0], clients[1:]
                ids = [f"m{i}" for i in range(args.messages)]
                for i in ids:
                    alice.send_nowait("bob", "x" * args.body, id=i)
                got = collections.Counter()
                deadline = time.monotonic() + 60
                while got["delivered"] < len(ids) and time.monotonic() < deadline:
                    for c in devices:
                        c.drain(0.05)
                    for f in alice.drain(0.05):
                        if f["type"] == "receipt":
                            got[f["status"]] += len(f["ids"])
                            got["receipt frames"] += 1
                scanned = segment_records(server.data_dir, record)
                infos = collections.Counter(d["delivered"] for i in ids for d in alice.info("bob", i))
                after = segment_records(server.data_dir, record)
            finally:
                for c in clients:
                    c.close()
                server.stop()
            m = len(ids)
            print(f"receipts: {n} device(s): {m} messages: {got['delivered']} ids ✓✓ in {got['receipt frames']} "
                  f"receipt frames; offd records per message: "
                  + ", ".join(f"{k} {v / m:.2f}" for k, v in sorted(scanned.items()))
                  + f"; then {m} info requests (devices delivered: {dict(infos)}): {sum(after.values()) - sum(scanned.values())} "
                  f"records more")


def segment_records(data_dir, record):
    """Counts of the records (by letter) in every offd segment file under ``data_dir``."""
    found = collections.Counter()
    for path in glob.glob(os.path.join(data_dir, "**", "offd", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                found.update(r[0] for r in record.scan(f.read())[0] if r[0] != "B")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m ops.offd_figures", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("copies", help="RSS per queued group copy")
    c.add_argument("--members", type=int, default=1024)
    c.add_argument("--messages", type=int, default=2000)
    c.add_argument("--body", type=int, default=40)
    c = sub.add_parser("dedup", help="RSS per sender's dedup window")
    c.add_argument("--senders", type=int, default=2000)
    c.add_argument("--ids", type=int, default=4096)
    c = sub.add_parser("stall", help="longest hub stall during maintenance, young and after a restart")
    c.add_argument("--users", type=int, default=10000)
    c.add_argument("--per-user", type=int, default=120)
    c.add_argument("--acked", type=float, default=0.2, help="share of each queue acked before maintenance")
    c.add_argument("--window", type=int, default=4096)
    c.add_argument("--segment-mb", type=int, default=16)
    c = sub.add_parser("flood", help="a real node's RSS under a big-group flood")
    c.add_argument("--members", type=int, default=1024)
    c.add_argument("--messages", type=int, default=2000)
    c.add_argument("--body", type=int, default=100)
    c = sub.add_parser("devices", help="RSS per queued item and per connection with 1 and N devices per user")
    c.add_argument("--devices", type=int, nargs="+", default=[1, 4], help="devices per user, one run each")
    c.add_argument("--users", type=int, default=10000, help="users of the in-process spool")
    c.add_argument("--items", type=int, default=20, help="items queued per user")
    c.add_argument("--online", type=int, default=500, help="users of the real node")
    c.add_argument("--body", type=int, default=40)
    c = sub.add_parser("receipts", help="offd records and receipts per message with 1 and N devices, and info's")
    c.add_argument("--devices", type=int, nargs="+", default=[1, 4], help="devices of the recipient")
    c.add_argument("--messages", type=int, default=500)
    c.add_argument("--body", type=int, default=40)
    args = p.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_CPU, (1800, 1800))  # bounded, whatever happens
    {"copies": copies, "dedup": dedup, "stall": stall, "flood": flood, "devices": devices,
     "receipts": receipts}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
