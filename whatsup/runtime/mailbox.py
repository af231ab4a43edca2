"""A process's mailbox: many writers, exactly one reader (the process itself).

gevent.queue.Queue would do, but it is built for many readers and writers and
holds three deques from birth (about 2.5 KB with its hub bookkeeping, even
when empty); a node holds one mailbox per connection, and most of them are
empty most of the time. This one holds a deque only while messages wait, and
one Waiter while its process waits.
"""
import collections

from gevent.hub import Waiter, get_hub
from gevent.queue import Empty


class Mailbox:
    __slots__ = ("_items", "_waiter")

    def __init__(self):
        self._items = None   # a deque while messages wait
        self._waiter = None  # the reader's Waiter while it waits in get()

    def __len__(self):
        return len(self._items) if self._items is not None else 0

    def __repr__(self):
        return f"<Mailbox {len(self)} waiting>"

    @property
    def queue(self):
        """The waiting messages, oldest first (a deque the caller may peek at or push to the front of)."""
        if self._items is None:
            self._items = collections.deque()
        return self._items

    def put(self, msg):
        """Never blocks; wakes the reader (through the hub, as gevent's Queue does)."""
        self.queue.append(msg)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            get_hub().loop.run_callback(waiter.switch, None)

    def get(self):
        """The oldest message; waits for one (only the owning process may call this)."""
        while not self._items:
            self._waiter = waiter = Waiter()
            try:
                waiter.get()
            finally:
                self._waiter = None
        return self.get_nowait()

    def get_nowait(self):
        items = self._items
        if not items:
            raise Empty()
        msg = items.popleft()
        if not items:
            self._items = None
        return msg
