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
there are none. Batches are cut at loop passes, on the hub, never by the
writer thread: a writer taking whatever was queued whenever it got the GIL
wrote many tiny batches, one fsync each (the offline spool fell from ~50,000
to ~18,000 msgs/s). (A pool task
per batch, as before, woke the thread through ``_Condition.notify_one`` for
every batch: 10.6 % of the hub's CPU at 2,000 msgs/s in the realistic
benchmark.) Finished batches come back through one async watcher, which libev
coalesces, so a burst of batches wakes the committer's greenlet once.
"""
import collections
import logging
import threading
import time

import gevent
from gevent.event import Event

from ..observe import latency

log = logging.getLogger("whatsup.batch")
#: Batches one writer task writes before it gives the pool's thread back, so the pool's other
#: tasks (unlinking compacted segments, account reads) wait behind a bounded run under load.
RUN = 16


class GroupCommitter:
    def __init__(self, pool, write, name):
        self.pool, self.write, self.name = pool, write, name
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
        self._idle, self._wake = Event(), Event()
        self._idle.set()
        self._written = gevent.get_hub().loop.async_()
        self._written.start(self._wake.set)
        self._loop = gevent.spawn(self._run)

    def __repr__(self):
        return (f"<GroupCommitter {self.name} pending={len(self.pending)} queued={len(self.queued)} "
                f"writing={self._writing} "
                f"batches={self.batches} failures={self.failures}>")

    def add(self, entry=None, waiter=None):
        """Queue ``entry`` (None for a waiter alone) for the next batch."""
        self.pending.append((entry, waiter))
        self._added += 1
        self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout=30.0):
        """Wait until everything added so far has been written (or failed)."""
        return self._idle.wait(timeout)

    def stop(self):
        self.flush()
        self._loop.kill()
        self._written.stop()

    def _drain(self):
        """On the pool's thread: write batches until nothing is queued (or RUN of them: the
        committer's greenlet then starts another task). Never raises."""
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

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            self._finish()
            with self._lock:
                if self.pending:
                    self.queued.append(self.pending)
                    self.pending = []
                start = self.queued and not self._writing
                if start:
                    self._writing = True
            if start:
                self.pool.spawn(self._drain)  # may wait for the pool's thread: a greenlet, not the hub

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


def _attempt(write, batch):
    """Run ``write``; returns its exception instead of raising it (a full disk is an expected,
    handled failure: no traceback in the node's log on every refused batch)."""
    try:
        write(batch)
    except Exception as exc:
        return exc
    return None
