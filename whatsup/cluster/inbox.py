"""Every node's inbox: a Redis Stream read through a consumer group, written in pipelines.

* :class:`InboxReader` (a process) reads this node's stream ``P:inbox:NODE`` with
  ``XREADGROUP`` on a connection of its own, ``BLOCK`` below the socket timeout
  (whatsup/cluster/engine.py). At each start it first reads its own pending
  entries from id 0 (handed to a previous incarnation that died before it
  acknowledged them), then new ones. An entry is acknowledged (``XACK`` then
  ``XDEL``, so the stream never holds done work) once its work is durable: at
  once for a wake-up, after the offd fsync for a message (whatsup/cluster/link.py).
  Streams are never trimmed by length: Debian 12's Redis 7.0 has no way to trim
  only acknowledged entries.
* :class:`Outbox` (a process) writes what this node sends: everything queued since
  its last write goes in one pipeline (``XADD`` to each destination's stream, the
  directory's writes, this node's acknowledgements), so a burst costs one round
  trip, the group commit of the wire. A lost connection is retried for
  ``cluster.retry_for`` seconds, then the entries' senders are told (their
  requests fail with a retryable error). A retried pipeline may append an entry
  twice: every reader drops duplicates (messages by sender and id in the router's
  dedup window, acks are cumulative, pushed items by seq on the device).
"""
import collections
import logging
import time

import gevent
from redis.exceptions import ResponseError

from . import wire
from .engine import UNREACHABLE, retrying

log = logging.getLogger("whatsup.cluster")
GROUP = "nodes"
FIELD = b"m"


class OutQueue:
    """What waits for the outbox's next pipeline (state apart from the process)."""
    __slots__ = ("entries", "ops", "acks", "pid", "table")

    def __init__(self, table):
        self.table, self.pid = table, None
        self.entries = collections.deque()  # (stream key, encoded message, on_fail or None)
        self.ops = collections.deque()      # raw commands: (name, *args)
        self.acks = []                      # entry ids of our own inbox to XACK + XDEL

    def __len__(self):
        return len(self.entries) + len(self.ops) + len(self.acks)

    def __repr__(self):
        return f"<OutQueue entries={len(self.entries)} ops={len(self.ops)} acks={len(self.acks)}>"

    def wake(self):
        if self.pid is not None:
            try:
                self.table.notify(self.pid, ("flush",))
            except Exception:  # the outbox restarts: its init flushes what waits
                pass

    def add(self, key, data, on_fail=None):
        self.entries.append((key, data, on_fail))
        self.wake()

    def op(self, *command):
        self.ops.append(command)
        self.wake()

    def ack(self, eid):
        self.acks.append(eid)
        self.wake()


class Outbox:
    """The process writing the OutQueue to Redis (gen_server callbacks)."""
    kind = "outbox"
    vsn = 1

    @staticmethod
    def init(proc, link):
        link.out.pid = proc.pid
        proc.mailbox.put(("flush",))
        return link

    @staticmethod
    def describe(link):
        return {"queued": len(link.out), "sent": link.counters["sent"], "retries": link.counters["write_failures"]}

    @staticmethod
    def handle_info(proc, msg, link):
        if msg[0] == "flush":
            while len(link.out):
                Outbox._write(link)
                gevent.sleep(0)
        return link

    @staticmethod
    def _write(link):
        out, n = link.out, link.opts.batch
        entries = [out.entries.popleft() for _ in range(min(n, len(out.entries)))]
        ops = [out.ops.popleft() for _ in range(min(n, len(out.ops)))]
        acks, out.acks = out.acks, []
        own = link.key(link.node)

        def write():
            pipe = link.client.pipeline(transaction=False)
            for key, data, _ in entries:
                pipe.xadd(key, {FIELD: data})
            for command in ops:
                pipe.execute_command(*command)
            if acks:
                pipe.xack(own, GROUP, *acks)
                pipe.xdel(own, *acks)
            return pipe.execute()
        started = time.monotonic()
        try:
            retrying(write, started + link.opts.retry_for, "write to the inboxes")
        except UNREACHABLE as exc:
            link.counters["write_failures"] += 1
            log.error("redis: %d entries not written (%s): their requests fail (retryable)", len(entries), exc)
            out.acks[:0] = acks  # acknowledged by a later write (or read again after a restart)
            for _, _, on_fail in entries:
                if on_fail is not None:
                    on_fail(exc)
            return
        link.rtt.observe(time.monotonic() - started)
        link.counters["sent"] += len(entries)
        link.counters["acked"] += len(acks)

    @staticmethod
    def terminate(proc, reason, link):
        link.out.pid = None


class InboxReader:
    """The process reading this node's inbox (gen_server callbacks); it reads between two
    messages of its own mailbox, so a reload or a stop never waits more than one BLOCK."""
    kind = "inbox"
    vsn = 1

    @staticmethod
    def init(proc, link):
        st = {"link": link, "client": link.dedicated(), "start": "0", "pause": 0.05}
        InboxReader._group(link, st["client"])
        proc.mailbox.put(("read",))
        return st

    @staticmethod
    def _group(link, client):
        try:
            client.xgroup_create(link.key(link.node), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def describe(st):
        return {"reading": "pending" if st["start"] != ">" else "new"}

    @staticmethod
    def handle_info(proc, msg, st):
        link = st["link"]
        key = link.key(link.node)
        start = st["start"]
        try:
            got = st["client"].xreadgroup(GROUP, link.node, {key: start}, count=link.opts.batch,
                                          block=None if start != ">" else int(link.opts.block * 1000))
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("redis: the inbox %s or its group is gone (Redis lost its data): made again", key)
            InboxReader._group(link, st["client"])
            st["start"] = "0"
            proc.mailbox.put(("read",))
            return st
        except UNREACHABLE as exc:
            link.counters["read_failures"] += 1
            if st["pause"] == 0.05:
                log.warning("redis: cannot read the inbox (%s): retrying", exc)
            gevent.sleep(st["pause"])
            st["pause"] = min(1.0, st["pause"] * 2)
            proc.mailbox.put(("read",))
            return st
        if st["pause"] != 0.05:
            log.info("redis: reading the inbox again")
            st["pause"] = 0.05
            for callback in list(link.reconnected):
                callback()
        entries = got[0][1] if got else []
        if start != ">":
            st["start"] = entries[-1][0] if entries else ">"  # pending entries: page through them
            if entries:
                link.counters["pending_reread"] += len(entries)
        for eid, fields in entries:
            if fields is None or FIELD not in fields:  # deleted meanwhile (acked by an earlier incarnation)
                link.out.ack(eid)
                continue
            link.received(eid, wire.decode(fields[FIELD]))
        proc.mailbox.put(("read",))
        return st

    @staticmethod
    def terminate(proc, reason, st):
        st["client"].close()
