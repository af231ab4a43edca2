"""One native thread that runs a store's blocking calls (its files), handed over cheaply.

gevent's ``ThreadPool.spawn`` allocates a result, an async watcher and a queue
entry per task and wakes the thread through a Condition: with random 1:1 traffic
at 1,500 msgs/s that hand-off was 16-18 % of the hub's GIL time (py-spy --gil),
one per group-commit batch. Here a task is a deque append; the thread is woken
(one futex) only when it sleeps; every result comes back through one async
watcher, which libev coalesces.

The thread is started with ``_thread.start_new_thread``, as gevent's own
ThreadPool does: ``threading.Thread.start`` waits until the new thread has run,
and on a loaded machine that wait held the hub past the 0.1 s monitor threshold
(an offd shard's start, seen by the test gate).

Not for sqlite: a connection must stay on the thread that made it, and
sqlitedict brings its own thread (whatsup/store/accounts.py).
"""
import _thread
import collections
import logging
import threading

import gevent
from gevent.event import AsyncResult

log = logging.getLogger("whatsup.worker")
_STOP = object()


class Worker:
    def __init__(self, name):
        self.name = name
        self._tasks = collections.deque()  # (fn, args, AsyncResult or None), from the hub
        self._done = collections.deque()   # (AsyncResult, value, exception), from the thread
        self._go = threading.Lock()        # held while the thread has nothing to do
        self._go.acquire()
        self._signalled = False            # _go was released and the thread has not woken yet
        self._back = gevent.get_hub().loop.async_()
        self._back.start(self._deliver)
        self.ended = threading.Event()     # set when the thread has returned (after kill)
        _thread.start_new_thread(self._run, ())

    def __repr__(self):
        return f"<Worker {self.name} tasks={len(self._tasks)} alive={not self.ended.is_set()}>"

    def spawn(self, fn, *args):
        """Run ``fn(*args)`` on the thread; nobody waits for it (an error is logged)."""
        self._put((fn, args, None))

    def apply(self, fn, args=()):
        """Run ``fn(*args)`` on the thread; the calling greenlet waits for its result."""
        result = AsyncResult()
        self._put((fn, args, result))
        return result.get()

    def kill(self):
        """Stop the thread once the tasks already handed to it have run."""
        self._put(_STOP)
        self._back.stop()

    def _put(self, task):
        self._tasks.append(task)
        if not self._signalled:
            self._signalled = True
            self._go.release()

    def _run(self):
        threading.current_thread().name = self.name  # what thread dumps call it
        try:
            self._serve()
        finally:
            self.ended.set()

    def _serve(self):
        while True:
            self._go.acquire()
            self._signalled = False
            while self._tasks:
                task = self._tasks.popleft()
                if task is _STOP:
                    return
                fn, args, result = task
                try:
                    value, exc = fn(*args), None
                except BaseException as e:
                    value, exc = None, e
                if result is not None:
                    self._done.append((result, value, exc))
                    self._back.send()
                elif exc is not None:
                    log.error("%s: %r failed: %r", self.name, fn, exc)

    def _deliver(self):
        while self._done:
            result, value, exc = self._done.popleft()
            if exc is None:
                result.set(value)
            else:
                result.set_exception(exc)
