"""Group commit: whatever arrives while one batch is being written goes into the next.

Blocking writes (fsync, sqlite commits) run on a native thread of ``pool`` so
the hub keeps serving; the hub only appends to a list. Waiters are called on
the hub with ``None`` once their batch is written, or with the exception that
failed it.
"""
import logging
import time

import gevent
from gevent.event import Event

from . import latency

log = logging.getLogger("whatsup.batch")


class GroupCommitter:
    def __init__(self, pool, write, name):
        self.pool, self.write, self.name = pool, write, name
        self.pending, self.waiters = [], []
        self.batches = self.failures = 0
        self.seconds = 0.0
        store = name.split()[0]  # "offd", "accounts", "table"
        self._timing, self._sizes = latency.COMMIT.labels(store), latency.COMMIT_SIZE.labels(store)
        self._wake, self._idle = Event(), Event()
        self._idle.set()
        self._loop = gevent.spawn(self._run)

    def __repr__(self):
        return (f"<GroupCommitter {self.name} pending={len(self.pending)} waiters={len(self.waiters)} "
                f"batches={self.batches} failures={self.failures}>")

    def add(self, entry=None, waiter=None):
        """Queue ``entry`` (None for a waiter alone) for the next batch."""
        if entry is not None:
            self.pending.append(entry)
        if waiter is not None:
            self.waiters.append(waiter)
        self._idle.clear()
        self._wake.set()

    def flush(self, timeout=30.0):
        """Wait until everything added so far has been written (or failed)."""
        return self._idle.wait(timeout)

    def stop(self):
        self.flush()
        self._loop.kill()

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            while self.pending or self.waiters:
                batch, waiters = self.pending, self.waiters
                self.pending, self.waiters = [], []
                started = time.monotonic()
                err = self.pool.apply(_attempt, (self.write, batch))
                if err is None:
                    took = time.monotonic() - started
                    self.batches += 1
                    self.seconds += took
                    self._timing.observe(took)
                    self._sizes.observe(len(batch))
                else:
                    self.failures += 1
                    log.error("%s: write of %d entries failed: %s", self.name, len(batch), err)
                for waiter in waiters:
                    try:
                        waiter(err)
                    except Exception:
                        log.exception("%s: waiter failed", self.name)
            self._idle.set()


def _attempt(write, batch):
    """Run ``write`` on the pool's thread; returns its exception instead of raising it.

    gevent's ThreadPool prints the traceback of any exception a task raises,
    so a disk that is full (an expected, handled failure) would put
    "Traceback" in the node's log on every refused batch.
    """
    try:
        write(batch)
    except Exception as exc:
        return exc
    return None
