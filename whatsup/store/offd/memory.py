"""offd's in-memory twin: the same queues and cursors (queues.py) kept in RAM only.

It satisfies :class:`whatsup.store.offd.api.Store` like the file spool and passes the
same behaviour suite (tests/test_offd_behaviour.py); it is for tests of what sits on
top of a spool (a core, a router) without files or a writer thread. Nothing survives
it: ``on_durable`` callbacks fire on the next loop pass (never inside the call that
queued, as after a real commit), and there is nothing to recover, compact or carry.
"""
import time

import gevent

from .queues import Queues


class MemorySpool(Queues):
    """A spool without a disk (api.Store)."""

    def __init__(self, max_queue, devices=None, on_ready=None, clock=time.time):
        super().__init__(max_queue, devices, on_ready, clock)
        self.incomplete = {}  # nothing is ever cut short: no crash to recover from

    def __repr__(self):
        return f"<MemorySpool users={len(self.queues)} queued={self.queued()}>"

    def open(self):
        return self

    def close(self):
        pass

    def flush(self, timeout=30.0):
        gevent.sleep(0)  # the durability callbacks of what was queued so far have run
        return True

    def stats(self):
        return {**self.counts, "queued": self.queued(), "users": len(self.queues)}

    def take_recovered(self):
        return {}

    def maintain(self):
        pass

    def intent(self, gid, sender, cid, body, members, on_durable):
        item = self._item("fanout", sender, cid, body, (gid, list(members)))
        self.unfinished.setdefault((sender, cid), {})["F"] = item
        self._later(on_durable)
        return item

    def done(self, sender, cid, on_durable):
        self._later(on_durable)

    def finished(self, key):
        self.unfinished.pop(key, None)

    def anchor(self, sid, sender, h):
        pass

    # --- hooks ---------------------------------------------------------------------

    def _segment(self):
        return 0

    def _kept(self, user, item, on_durable, lazy=False):
        self._later(on_durable)

    def _kept_group(self, users, item, on_durable):
        self._later(on_durable)

    def _deleted(self, user, items):
        pass

    def _cursor_moved(self, user, device, cursor):
        pass

    @staticmethod
    def _later(on_durable):
        if on_durable is not None:
            gevent.get_hub().loop.run_callback(on_durable, None)
