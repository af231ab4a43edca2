"""Group commit: whatever arrives while one batch is being written goes into the next.

Blocking writes (fsync, sqlite commits) run on a native thread of ``pool`` so
the hub keeps serving; the hub only appends to a queue. Waiters are called in
the committer's greenlet with ``None`` once their batch is written, or with the
exception that failed it.

The hand-off costs at most one wake-up of the writer per loop pass, and none
while it is busy: ``add`` only appends and wakes the committer's greenlet, which
runs after the loop pass's other callbacks, hands what the pass added to the
writer as one batch and starts the writer if it is idle; once started, the
writer keeps taking the batches handed over meanwhile (as one write) until
there are none. Batches are cut at loop passes, on the hub (and, given an
``interval`` — offd's ``commit_interval`` — at most once per interval while
the committer is busy: ``_spaced``), never by the writer thread: a writer taking whatever was queued whenever it got the GIL
wrote many tiny batches, one fsync each (the offline spool fell from ~50,000
to ~18,000 msgs/s). (A pool task
per batch, as before, woke the thread through ``_Condition.notify_one`` for
every batch: 10.6 % of the hub's CPU at 2,000 msgs/s in the realistic
benchmark.) Finished batches come back through one async watcher, which libev
coalesces, so a burst of batches wakes the committer's greenlet once.

Records nobody waits for soon are added ``lazy``: they wake nobody and go with
the next batch someone does wait for, or after ``LAZY`` seconds. A finished
batch does not start a write of lazy records alone: that kept every writer
fsyncing back to back (random 1:1 traffic at 1,000 msgs/s made ~3,000 batches a
second on four shards, three fsyncs per message, mostly a lone cursor or delete
record riding behind the last one; the writer threads' wake-ups and GIL hand-offs
were most of the node's CPU at that rate). offd's delete
and cursor records are lazy (lost, they only bring an item to a device again,
which skips it), and so are ✓✓ receipts (the online sender is told at once;
only the delete of the acked item waits for the receipt to be durable). At 1,000 msgs/s of random 1:1 traffic each message made ~1.6 batches,
each a thread hand-off, a GIL round trip and an fsync (strace: 18 futex calls
per message); a message's delete rode alone in most of them.

The committer's greenlet is a process (kind ``commit``, in ``ps()``) linked to the
process that made the committer (the shard or table owning the file): it stops
when its owner stops, and a crash of it kills the owner, whose supervisor restarts
both. A committer made outside any process (the offline tools, unit tests) runs in
a table of its own.
"""
import collections
import logging
import threading
import time

import gevent
from gevent.event import Event

from ..observe import latency
from ..runtime.process import ProcessTable, current

log = logging.getLogger("whatsup.batch")
#: Batches one writer task writes before it gives the pool's thread back, so the pool's other
#: tasks (unlinking compacted segments, account reads) wait behind a bounded run under load.
RUN = 16
WAKE = ("wake",)
#: Seconds a lazy record may wait for a batch to ride in before it gets one of its own.
LAZY = 0.05


class GroupCommitter:
    def __init__(self, pool, write, name, interval=0.0):
        self.pool, self.write, self.name = pool, write, name
        self.interval = interval           # seconds at least between two hand-overs (see ``_pass``)
        self.batches = self.failures = 0
        self.seconds = 0.0
        store = name.split()[0]  # "offd", "accounts", "table"
        self._timing, self._sizes = latency.COMMIT.labels(store), latency.COMMIT_SIZE.labels(store)
        self.pending = []                  # (entry or None, waiter or None) added this loop pass
        self.queued = collections.deque()  # batches (lists of those pairs) handed to the writer
        self.done = collections.deque()    # (waiters, error, seconds, size) of written batches, for the hub
        self._lock = threading.Lock()      # guards ``queued`` against ``_writing`` changing under it
        self._writing = False              # a writer task is on the pool, or handed to it
        self._added = self._finished = 0
        self._idle = Event()
        self._idle.set()
        self._woken = False                # a WAKE waits in the committer's mailbox
        self._urgent = False               # ``pending`` holds a record someone waits for
        self._overdue = False              # the lazy records in ``pending`` waited LAZY seconds
        loop = gevent.get_hub().loop
        self._written = loop.async_()
        self._written.start(self._wake)
        # Started by the first lazy record of a batch, stopped when it fires. Repeating, because
        # libev re-arms a spent one-shot timer for its old expiry: restarted, it fired within a
        # millisecond, and lazy records went in batches of their own (~600 a second per shard).
        self._lazy = loop.timer(LAZY, LAZY)
        self._loop = loop
        self._next = 0.0                   # loop time before which nothing more is handed over
        self._spacer = None                # a timer waking the committer at ``_next``
        owner = current()
        if owner is None:
            self._table = ProcessTable()
            pid = self._table.spawn(Committer, self, entity=name)
        else:
            self._table = owner.table
            pid = self._table.spawn_link(owner, Committer, self, entity=name)
        self._proc = self._table.lookup(pid)

    def __repr__(self):
        return (f"<GroupCommitter {self.name} pending={len(self.pending)} queued={len(self.queued)} "
                f"writing={self._writing} "
                f"batches={self.batches} failures={self.failures}>")

    def add(self, entry=None, waiter=None, lazy=False):
        """Queue ``entry`` (None for a waiter alone) for the next batch; a ``lazy`` one (its
        waiter, if any, is in no hurry) waits up to LAZY seconds for a batch it can ride in."""
        self.pending.append((entry, waiter))
        self._added += 1
        self._idle.clear()
        if not lazy:
            self._urgent = True
            self._wake()
        elif not self._lazy.active:
            self._lazy.start(self._due)

    def flush(self, timeout=30.0):
        """Wait until everything added so far has been written (or failed); False at once when the
        committer's process is gone (it crashed: what it held is not written)."""
        if self.pending:
            self._urgent = True
            self._wake()
        return self._proc.alive and self._idle.wait(timeout)

    def stop(self):
        self.flush()
        self._table.stop(self._proc.pid)
        self._written.stop()
        self._lazy.stop()
        if self._spacer is not None:
            self._spacer.stop()

    def _wake(self):
        """Have the committer's process run one pass (at most one WAKE waits in its mailbox)."""
        if not self._woken:  # the writer's finished batches may call for one while one waits
            self._woken = True
            self._proc.mailbox.put(WAKE)

    def _due(self):
        """The lazy timer: the oldest lazy record has waited LAZY seconds; it goes now."""
        self._lazy.stop()
        self._overdue = True
        self._wake()

    def _drain(self):
        """On the pool's thread: write batches until nothing is queued (or RUN of them: the
        committer's process then starts another task). Never raises."""
        for run in range(RUN + 1):
            with self._lock:
                if not self.queued or run == RUN:
                    self._writing = False
                    if self.queued:
                        self._written.send()  # more to write: the committer starts a new task
                    return
                batch = [pair for handed in self.queued for pair in handed]
                self.queued.clear()
            entries = [entry for entry, _ in batch if entry is not None]
            started = time.monotonic()
            err = _attempt(self.write, entries)
            self.done.append(([w for _, w in batch], err, time.monotonic() - started, len(entries)))
            self._written.send()

    def _pass(self):
        """In the committer's process: answer the written batches, hand the added entries to the
        writer (at most once per ``interval``), and start it if it is idle."""
        self._woken = False
        self._finish()
        hand_over = self.pending and (self._urgent or self._overdue) and self._spaced()
        with self._lock:
            if hand_over:
                self.queued.append(self.pending)
                self.pending = []
                self._urgent = self._overdue = False
                self._lazy.stop()
            start = self.queued and not self._writing
            if start:
                self._writing = True
        if start:
            self.pool.spawn(self._drain)

    def _spaced(self):
        """True when the last hand-over is ``interval`` seconds old; else a timer wakes the
        committer then. A busy shard commits every ``interval``, an idle one at once. Every batch
        costs a wake-up of the writer, GIL hand-offs, an O_DSYNC write and the way back, whatever
        it holds: with random 1:1 traffic at 2,000 msgs/s on four shards, nearly every message
        made a batch of its own (2,022 a second); 2 ms apart they were 1,421, and the node's CPU
        per message fell from 450 to 405 µs."""
        now = self._loop.now()
        if now >= self._next:
            self._next = now + self.interval
            return True
        if self._spacer is None:
            self._spacer = self._loop.timer(self._next - now)  # a fresh one-shot (see ``_lazy``)
            self._spacer.start(self._spaced_out)
        return False

    def _spaced_out(self):
        self._spacer = None
        self._wake()

    def _finish(self):
        """Count the written batches and call their waiters."""
        while self.done:
            waiters, err, seconds, size = self.done.popleft()
            if err is None:
                self.batches += 1
                self.seconds += seconds
                self._timing.observe(seconds)
                self._sizes.observe(size)
            else:
                self.failures += 1
                log.error("%s: write of %d entries failed: %s", self.name, size, err)
            for waiter in waiters:
                if waiter is None:
                    continue
                try:
                    waiter(err)
                except Exception:
                    log.exception("%s: waiter failed", self.name)
            self._finished += len(waiters)
        if self._finished == self._added:
            self._idle.set()


class Committer:
    """The process of one GroupCommitter (gen_server callbacks): a pass per WAKE."""
    kind = "commit"
    vsn = 1

    @staticmethod
    def init(proc, committer):
        return committer

    @staticmethod
    def describe(c):
        return {"name": c.name, "pending": len(c.pending), "queued": len(c.queued), "writing": c._writing,
                "batches": c.batches, "failures": c.failures}

    @staticmethod
    def handle_info(proc, msg, c):
        c._pass()
        return c


def _attempt(write, batch):
    """Run ``write``; returns its exception instead of raising it (a full disk is an expected,
    handled failure: no traceback in the node's log on every refused batch)."""
    try:
        write(batch)
    except Exception as exc:
        return exc
    return None
