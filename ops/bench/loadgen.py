"""The load generator: one process driving many connections from a single epoll loop.

Run by the benchmark as ``python3 -m ops.bench.loadgen`` (pinned to its own
cores); it reads one JSON command per line on stdin and answers each with one
JSON line on stdout (JSON, not pickle: nothing executable crosses the pipe).

Commands (``op``)::

    connect  target, address, users [[user, peer], ...], register   -> timings
    traffic  rate (msgs/s, 0 = closed loop), seconds, window          -> counts, latencies, gaps
    scatter  rate, seconds, names: each msg from a random own connection to a random other name
                                                                      -> counts, latencies, gaps, backlog
    spool    to [users], count, window                                -> ✓ counts and time
    drain    user, expect                                             -> seconds to receive it all
    request  user, frame                                              -> the answer (e.g. group_create)
    fanout   sender, group, count, window                             -> copies delivered, latencies
    close    [users] (all; a bare close also ends the process)

Speed matters more than elegance here: non-blocking sockets, frames encoded
once and written in one send per connection per loop turn (only the connections
with something to write are visited: 10,000 idle ones cost nothing), pushed items
acked with one cumulative ack per burst. Every message id carries its send
time (``n/microseconds``), so ✓, ✓✓ and end-to-end latency need no bookkeeping.
"""
import json
import random
import select
import selectors
import socket
import sys
import time

from . import wire

BODY = "x" * 100
PING_FRAME = wire.encode({"type": "ping"})
PASSWORD = "bench-password-"
SAMPLES = 5000  # latency samples returned per kind; max and count are exact
GAP = 0.005     # pauses between two deliveries (to any receiver) longer than this are reported
GAPS = 100      # the longest ones, at most
#: the targets that speak whatsup's protocol (hello, register, password login, ✓ and ✓✓);
#: the others take a bare ``login`` with a peer and only forward
FULL_PROTOCOL = ("whatsup", "receipt_router")


class Conn:
    __slots__ = ("sock", "user", "peer", "rbuf", "wbuf", "n", "inflight", "unsent", "seq", "acked",
                 "answers", "dirty", "last_out")

    def __init__(self, address, user, peer, dirty):
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.user, self.peer = user, peer
        self.rbuf, self.wbuf = bytearray(), []
        self.n = self.inflight = self.unsent = self.seq = self.acked = 0
        self.answers = {}  # ref -> answer frame, for the set-up requests
        self.dirty = dirty  # the load generator's set of connections with bytes to write
        self.last_out = time.monotonic()

    def put(self, data):
        self.wbuf.append(data)
        self.dirty.add(self)
        self.last_out = time.monotonic()

    def msg(self, to=None, group=None):
        self.n += 1
        self.unsent += 1
        self.put(wire.encode({"type": "msg", "ref": self.n, "body": BODY,
                                      "id": f"{self.n}/{int(time.monotonic() * 1e6)}",
                                      **({"group": group} if group else {"to": to})}))


def sent_at(cid):
    return int(cid[cid.index("/") + 1:]) / 1e6


class Stats:
    """Counts and latencies of one command."""

    def __init__(self):
        self.sent = self.delivered = 0
        self.lat = {"e2e": [], "sent": [], "delivered": []}
        self.errors = {}
        self.last = None  # when the last msg arrived (any receiver)
        self.gaps = []    # (start, seconds) of the pauses between deliveries longer than GAP

    def result(self):
        return {"sent": self.sent, "delivered": self.delivered, "errors": self.errors,
                "lat": {kind: {"count": len(values), "max": max(values, default=0.0),
                               "samples": random.sample(values, min(SAMPLES, len(values)))}
                        for kind, values in self.lat.items()}}


class LoadGen:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.dirty = set()
        self.by_user = {}
        self.full = False  # the target speaks FULL_PROTOCOL
        self.stats = Stats()
        self.pinged = time.monotonic()
        self.ping = None  # seconds of silence after which a connection pings: idle_timeout / 3, as a device

    # --- the loop ------------------------------------------------------------------

    def pump(self, until, done=None, tick=None):
        """Write, read and dispatch until ``until`` (monotonic) or ``done()``; returns done's value."""
        while True:
            now = time.monotonic()
            if done is not None and done():
                return True
            if now >= until:
                return False
            if tick is not None:
                tick(now)
            if self.full and self.ping is not None and now - self.pinged > 1.0:
                self._keep_alive(now)
            dirty = list(self.dirty)  # the connections hold this set: cleared, never replaced
            self.dirty.clear()
            for c in dirty:
                self._write(c)
            for key, _ in self.sel.select(0.001):
                self._read(key.data)

    def _keep_alive(self, now):
        """Ping from every connection silent for a third of the server's idle_timeout, as a device
        does: idle users stay logged in while another target's steps run."""
        self.pinged = now
        for c in self.conns:
            if now - c.last_out > self.ping:
                c.put(PING_FRAME)

    def _write(self, c):
        data = b"".join(c.wbuf) if len(c.wbuf) > 1 else c.wbuf[0]
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        c.wbuf = [data[n:]] if n < len(data) else []
        if c.wbuf:
            self.dirty.add(c)

    def _read(self, c):
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError(f"{c.user}: connection closed by the server")
        buf = c.rbuf
        buf += data
        bodies, used = wire.split(buf)
        del buf[:used]
        now = time.monotonic()
        for body in bodies:
            self._frame(c, wire.decode(body), now)
        if c.seq > c.acked:
            c.acked = c.seq
            c.put(wire.encode({"type": "ack", "seq": c.seq}))

    def _frame(self, c, f, now):
        ftype, st = f["type"], self.stats
        if ftype == "msg":
            st.delivered += 1
            st.lat["e2e"].append(now - sent_at(f["id"]))
            if st.last is not None and now - st.last > GAP:
                st.gaps.append((st.last, now - st.last))
            st.last = now
            sender = self.by_user.get(f.get("from") or c.peer)
            if sender is not None:
                sender.inflight -= 1
            c.seq = max(c.seq, f.get("seq", 0))
        elif ftype == "sent":
            st.lat["sent"].append(now - sent_at(f["id"]))
            c.unsent -= 1
        elif ftype == "receipt":
            c.seq = max(c.seq, f["seq"])
            if f["status"] == "delivered":
                st.lat["delivered"] += [now - sent_at(i) for i in f["ids"]]
        elif ftype == "error":
            st.errors[f["code"]] = st.errors.get(f["code"], 0) + 1
            if "ref" in f:
                c.answers[f["ref"]] = f
        else:
            c.answers[f.get("ref")] = f

    # --- commands --------------------------------------------------------------------

    def connect(self, target, address, users, register=True):
        """Open a connection per (user, peer); log each in. Returns the seconds each phase took."""
        address = tuple(address)
        self.full = target in FULL_PROTOCOL
        started = time.monotonic()
        new = [Conn(address, user, peer, self.dirty) for user, peer in users]
        for c in new:
            self.sel.register(c.sock, selectors.EVENT_READ, c)
            self.by_user[c.user] = c
        self.conns += new
        connected = time.monotonic()
        if self.full:
            self._requests(new, lambda c: [{"type": "hello", "ref": 1, "versions": [1]}] +
                           ([{"type": "register", "ref": 2, "user": c.user, "password": PASSWORD + c.user}]
                            if register else []), 2 if register else 1)
            registered = time.monotonic()
            self.ping = min(c.answers[1]["idle_timeout"] for c in new) / 3
            self._requests(new, lambda c: [{"type": "login", "ref": 3, "user": c.user,
                                            "password": PASSWORD + c.user}], 3)
        else:
            registered = time.monotonic()
            self._requests(new, lambda c: [{"type": "login", "ref": 3, "user": c.user, "peer": c.peer}], 3)
        done = time.monotonic()
        failed = [c.answers[r] for c in new for r in (2, 3) if r in c.answers and
                  c.answers[r]["type"] == "error" and c.answers[r]["code"] != "user_taken"]
        if failed:
            raise RuntimeError(f"{len(failed)} logins failed, e.g. {failed[0]}")
        for c in new:
            c.answers.clear()  # later requests number their refs from 1 again
        return {"connections": len(new), "connect_seconds": connected - started,
                "register_seconds": registered - connected, "login_seconds": done - registered}

    def _requests(self, conns, frames, last_ref):
        for c in conns:
            for f in frames(c):
                c.put(wire.encode(f))
        if not self.pump(time.monotonic() + 600, lambda: all(last_ref in c.answers for c in conns)):
            raise TimeoutError("no answer to the set-up requests within 600 s")

    def traffic(self, rate, seconds, window):
        """Every connection sends to its peer: ``rate`` msgs/s in all (open loop, at most ``window``
        in flight per sender), or as fast as ``window`` allows when ``rate`` is 0."""
        senders = [c for c in self.conns if c.peer in self.by_user]
        self.stats = st = Stats()
        cpu = time.process_time()
        t0 = time.monotonic()
        end = t0 + seconds
        rr = [0]

        def tick(now):
            if rate:
                due = int(rate * (now - t0)) - st.sent
                tries = 0
                while due > 0 and tries < len(senders):
                    c = senders[rr[0] % len(senders)]
                    rr[0] += 1
                    if c.inflight < window:
                        c.msg(c.peer)
                        c.inflight += 1
                        st.sent += 1
                        due -= 1
                        tries = 0
                    else:
                        tries += 1
            else:
                for c in senders:
                    if c.inflight <= window // 2:
                        for _ in range(window - c.inflight):
                            c.msg(c.peer)
                        st.sent += window - c.inflight
                        c.inflight = window
        self.pump(end, tick=tick)
        delivered_in_time, backlog = st.delivered, sum(c.inflight for c in senders)
        gaps = sorted(st.gaps, key=lambda g: -g[1])[:GAPS]  # the drain after the step is not paced
        cpu = time.process_time() - cpu
        self.pump(time.monotonic() + 10, lambda: all(c.inflight <= 0 for c in senders) and
                  (not self.full or (len(st.lat["delivered"]) >= st.sent and
                                     all(c.unsent <= 0 for c in senders))))
        for c in senders:
            c.inflight = c.unsent = 0
        return {**st.result(), "seconds": seconds, "delivered_in_time": delivered_in_time,
                "backlog": backlog, "cpu_seconds": cpu, "started": t0, "gaps": gaps}

    def scatter(self, rate, seconds, names, drain=10.0):
        """Open loop: ``rate`` msgs/s in all, each from a random connection of this process to a
        random other user of ``names`` (a connection of any load generator). ``backlog`` is
        sampled once a second (sent here minus delivered here: summed over the load generators
        it is what the server holds); after the step, the ✓ and ✓✓ of everything sent are awaited
        (FULL_PROTOCOL) or arrivals stop (the forwarding baselines) for at most ``drain`` seconds."""
        senders = list(self.conns)
        self.stats = st = Stats()
        cpu = time.process_time()
        t0 = time.monotonic()
        end = t0 + seconds
        pick, backlog = random.Random(), []

        def tick(now):
            due = int(rate * (now - t0)) - st.sent
            for _ in range(max(0, due)):
                c = senders[pick.randrange(len(senders))]
                to = names[pick.randrange(len(names))]
                while to == c.user:
                    to = names[pick.randrange(len(names))]
                c.msg(to)
                st.sent += 1
            if now - t0 >= len(backlog) + 1:
                backlog.append(st.sent - st.delivered)
        self.pump(end, tick=tick)
        delivered_in_time = st.delivered
        gaps = sorted(st.gaps, key=lambda g: -g[1])[:GAPS]
        cpu = time.process_time() - cpu
        if self.full:
            self.pump(time.monotonic() + drain, lambda: len(st.lat["delivered"]) >= st.sent and
                      all(c.unsent <= 0 for c in senders))
        else:
            quiet = [st.delivered, time.monotonic()]

            def settled():
                now = time.monotonic()
                if st.delivered != quiet[0]:
                    quiet[:] = [st.delivered, now]
                return now - quiet[1] > 0.5
            self.pump(time.monotonic() + drain, settled)
        for c in senders:
            c.unsent = 0
        return {**st.result(), "seconds": seconds, "delivered_in_time": delivered_in_time,
                "backlog": st.sent - delivered_in_time, "backlog_series": backlog,
                "cpu_seconds": cpu, "started": t0, "gaps": gaps}

    def spool(self, to, count, window):
        """Connected senders send ``count`` messages to offline users ``to``; ✓ paces them."""
        senders = list(self.conns)
        self.stats = st = Stats()
        rr = [0]

        def tick(now):
            for c in senders:
                while c.unsent < window and st.sent < count:
                    c.msg(to[rr[0] % len(to)])
                    rr[0] += 1
                    st.sent += 1
        t0 = time.monotonic()
        self.pump(t0 + 600, lambda: len(st.lat["sent"]) >= count, tick)
        return {**st.result(), "seconds": time.monotonic() - t0}

    def request(self, user, frame):
        """Send ``frame`` from ``user``'s connection; returns the answer (an error raises)."""
        c = self.by_user[user]
        c.n += 1
        ref = frame["ref"] = c.n
        c.put(wire.encode(frame))
        if not self.pump(time.monotonic() + 60, lambda: ref in c.answers):
            raise TimeoutError(f"no answer to {frame['type']} within 60 s")
        answer = c.answers.pop(ref)
        if answer["type"] == "error":
            raise RuntimeError(f"{frame['type']} refused: {answer}")
        return {"answer": answer}

    def fanout(self, sender, group, count, window):
        """``sender`` sends ``count`` messages to ``group`` (at most ``window`` without ✓); every
        other connection is a member, and each copy's arrival is timed."""
        c = self.by_user[sender]
        self.stats = st = Stats()
        copies = count * (len(self.conns) - 1)

        def tick(now):
            while c.unsent < window and st.sent < count:
                c.msg(group=group)
                st.sent += 1
        t0 = time.monotonic()
        complete = self.pump(t0 + 300, lambda: st.delivered >= copies, tick)
        seconds = time.monotonic() - t0
        self.pump(time.monotonic() + 60, lambda: c.unsent <= 0)  # the last ✓s, outside the timing
        return {**st.result(), "seconds": seconds, "copies": copies, "complete": complete}

    def drain(self, address, user, expect):
        """Log ``user`` in and time how long the ``expect`` queued messages take to arrive."""
        self.stats = st = Stats()
        t0 = time.monotonic()
        self.connect("whatsup", address, [(user, None)], register=False)
        ok = self.pump(time.monotonic() + 120, lambda: st.delivered >= expect)
        return {"seconds": time.monotonic() - t0, "delivered": st.delivered, "complete": ok}

    def close(self, users=None):
        """Close the connections of ``users`` (all when None)."""
        users = None if users is None else set(users)
        keep, gone = [], []
        for c in self.conns:
            (gone if users is None or c.user in users else keep).append(c)
        for c in gone:
            self.dirty.discard(c)
            self.sel.unregister(c.sock)
            c.sock.close()
            del self.by_user[c.user]
        self.conns = keep
        return {"closed": len(gone)}


def main():
    gen = LoadGen()
    while True:
        if not select.select([sys.stdin], [], [], 1.0)[0]:
            gen.pump(time.monotonic() + 0.1)  # between commands: read, ack and keep alive
            continue
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            answer = {"ok": True, **getattr(gen, op)(**cmd)}
        except Exception as exc:  # reported to the controller, which stops the run
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if op == "close" and not cmd:
            break


if __name__ == "__main__":
    main()
