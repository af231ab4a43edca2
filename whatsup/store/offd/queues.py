"""A spool's queues in RAM: one copy of each item per user, and a cursor per device.

Pure (no file, no hub; time from the clock it is given): the file spool (spool.py) and its in-memory twin
(memory.py) are this plus how each keeps it; they implement the hooks at the end
(``_segment``, ``_kept``, ``_kept_group``, ``_deleted``, ``_cursor_moved``). Both satisfy
:class:`whatsup.store.offd.api.Store`, and tests/test_offd_behaviour.py runs one
suite against both.

One copy per user with a cursor per device, not a queue per device (docs/ARCHITECTURE.md,
"offd and devices"): a queued item costs one deque slot in its user's queue however
many devices the user has, and a device costs one :class:`Cursor` per user *with a
queue*, not a slot per item (ops/offd_figures.py devices: per queued item with 1 and
with 4 devices). An item leaves the queue when every device linked now has acked it
(an unlinked device stops holding anything) and the ✓✓ receipts its first ack made
are durable (:meth:`Queues.release`); a device linked later starts past every item
queued before it (:meth:`Queues.link`).
"""
import collections
import heapq
import itertools
import logging
import time

from ...protocol import PRIMARY, pack

log = logging.getLogger("whatsup.offd")
_PRIMARY_ONLY = (PRIMARY,)


def primary_only(user):
    """The device set of a node that knows of no companions: the primary alone."""
    return _PRIMARY_ONLY


def for_device(item, device):
    """Whether ``item`` goes to ``device``: every item does, but a ``direct`` one (a history
    bundle, docs/PROTOCOL.md "Devices"), whose ``cid`` is the one device it is for."""
    return item.kind != "direct" or item.cid == device


class QueueFull(Exception):
    """The recipient already has offd.max_queue items waiting."""


class Item:
    """A queued item; ``group`` is (gid, users) for a group copy shared by ``users`` (a G
    record) or a fan-out intent (an F record, kind "fanout", frame the body). ``seg`` is None
    once a failed write took it back."""
    __slots__ = ("seq", "ts", "kind", "sender", "cid", "frame", "seg", "group")

    def __init__(self, seq, ts, kind, sender, cid, frame, seg, group=None):
        self.seq, self.ts, self.kind, self.sender, self.cid, self.frame, self.seg = (
            seq, ts, kind, sender, cid, frame, seg)
        self.group = group

    def __repr__(self):
        return f"<Item {self.kind} seq={self.seq} from={self.sender} id={self.cid}>"


class Cursor:
    """Where one device is in its user's queue: it acked the first ``pos`` items (the last of
    them seq ``acked``) and its current connection was sent the ``sent`` items after those;
    ``seg`` is where the file spool keeps it (None: nowhere yet)."""
    __slots__ = ("pos", "sent", "acked", "seg")

    def __init__(self, pos=0, acked=0, seg=None):
        self.pos, self.sent, self.acked, self.seg = pos, 0, acked, seg

    def __repr__(self):
        return f"<Cursor pos={self.pos} sent={self.sent} acked={self.acked}>"

    def shift(self, n):
        """The first ``n`` items of the queue are gone."""
        if self.pos < n:
            self.sent = max(0, self.sent - (n - self.pos))
        self.pos = max(0, self.pos - n)


class UserQueue:
    """A user's items in seq order, shared by the user's devices. ``cursors`` holds the devices
    that logged in, acked or linked since the queue was made (a linked device without one is
    at the front); ``delivered`` is the highest seq some device acked (its ✓✓ were made),
    ``settled`` the highest whose ✓✓ are durable."""
    __slots__ = ("items", "cursors", "delivered", "settled")

    def __init__(self):
        self.items = collections.deque()
        self.cursors = {}
        self.delivered = self.settled = 0

    def __len__(self):
        return len(self.items)

    def __repr__(self):
        return f"<UserQueue queued={len(self.items)} cursors={self.cursors}>"

    def cursor(self, device):
        c = self.cursors.get(device)
        if c is None:
            c = self.cursors[device] = Cursor()
        return c

    def index(self, seq):
        """How many items have a seq <= ``seq``."""
        items, lo, hi = self.items, 0, len(self.items)
        while lo < hi:
            mid = (lo + hi) // 2
            if items[mid].seq <= seq:
                lo = mid + 1
            else:
                hi = mid
        return lo


class Acked:
    """What one device's ack did: ``items`` reached a device for the first time (the router
    stores their ✓✓); nothing of it is deleted before :meth:`Queues.release`."""
    __slots__ = ("user", "device", "upto", "items", "released")

    def __init__(self, user, device, upto=0, items=()):
        self.user, self.device, self.upto, self.items, self.released = user, device, upto, items, False

    def __repr__(self):
        return f"<Acked {self.user}/{self.device} upto={self.upto} items={len(self.items)} released={self.released}>"


class Queues:
    """The queues of one spool, and what devices do to them (the hub's side of api.Store)."""

    def __init__(self, max_queue, devices=None, on_ready=None, clock=time.time):
        self.max_queue = max_queue
        self.clock = clock
        self.devices = devices or primary_only  # callable(user) -> the user's linked device ids
        self.on_ready = on_ready                 # callable(user): an item for user can be sent
        self.queues = {}                         # user -> UserQueue (none empty)
        self.held = {}                           # user -> deque of Acked, in ack order
        self.counts = collections.Counter()
        self.counter = 0                         # the last seq stamped
        self.unfinished = {}  # (sender, cid) -> {"F"/"G": Item}: kept until its fan-out is done
        # Expiry's due-heap: (ms, user), no later than the front of the user's queue, one entry
        # per user who had a queue lately (~100 bytes each), so a pass visits what is due only.
        self.fronts = []
        self._fronted = set()

    # --- items ---------------------------------------------------------------------

    def queue(self, user):
        q = self.queues.get(user)
        if q is None:
            q = self.queues[user] = UserQueue()
        if user not in self._fronted:  # what comes next is stamped no earlier than now
            self._fronted.add(user)
            heapq.heappush(self.fronts, (int(self.clock() * 1000), user))
        return q

    def refront(self):
        """Rebuild ``fronts`` from the queues as they are (after a recovery filled them)."""
        self.fronts = [(q.items[0].ts if q.items else 0, user) for user, q in self.queues.items()]
        heapq.heapify(self.fronts)
        self._fronted = set(self.queues)

    def expire(self, cutoff):
        """Drop the items stamped before ``cutoff`` (ms), yielding ``(user, items dropped)`` per
        user whose front may be that old: the work is what is due, not what is queued."""
        fronts = self.fronts
        while fronts and fronts[0][0] < cutoff:
            user = heapq.heappop(fronts)[1]
            q = self.queues.get(user)
            gone = self._expire_front(user, q, cutoff) if q is not None else ()
            q = self.queues.get(user)
            if q is None:
                self._fronted.discard(user)
            else:  # an emptied queue held for its receipts: its next item is stamped from now on
                heapq.heappush(fronts, (q.items[0].ts if q.items else int(self.clock() * 1000), user))
            yield user, gone

    def queued(self):
        return sum(len(q) for q in self.queues.values())

    def users(self):
        """The users with something queued."""
        return list(self.queues)

    def items(self, user):
        """A copy of what ``user``'s queue holds (Items, oldest first)."""
        q = self.queues.get(user)
        return list(q.items) if q is not None else []

    def positions(self, user):
        """{device: the seq it acked up to} of ``user``'s devices past the front of the queue (what
        A records keep: whatsup-reshard carries them, so a device does not get those items again)."""
        q = self.queues.get(user)
        return {d: c.acked for d, c in q.cursors.items() if c.pos} if q is not None else {}

    def put(self, user, kind, frame, sender=None, cid=None, on_durable=None, force=False, lazy=False):
        """Queue ``frame`` (a dict, seq and ts are stamped into it; or a protocol.Template) for
        ``user``; ``on_durable(err)`` once it is kept. Returns the Item. Raises QueueFull unless
        ``force`` (receipts are forced: refusing one would lose it, and they are bounded by the
        messages sent). ``lazy``: no one waits for it soon (a ✓✓ receipt: the online sender
        is poked at once, only the acked item's delete waits), so it may ride in a later write."""
        q = self.queue(user)
        if not force and len(q.items) >= self.max_queue:
            raise QueueFull(user)
        item = self._item(kind, sender, cid, frame)
        q.items.append(item)
        self._kept(user, item, on_durable, lazy)
        self.counts["put"] += 1
        if self.on_ready is not None:
            self.on_ready(user)
        return item

    def put_group(self, users, gid, sender, cid, template, on_durable):
        """Queue one copy of a group message (``template``, a protocol.Template) for ``users``,
        all members on this spool: one seq and one frame shared by their queues. A member
        whose queue holds max_queue items is skipped. Returns the Item (its ``group[1]``
        lists who got it). It stays among the ``unfinished`` until :meth:`finished` even if
        every member acks it: recovery completes a fan-out from the spools that lack it."""
        here = []
        item = self._item("gmsg", sender, cid, template, (gid, here))
        for user in users:
            q = self.queue(user)
            if len(q.items) >= self.max_queue:
                self.counts["skipped_queue_full"] += 1
                log.warning("queue of %s is full: group %s message %s skipped for them", user, gid, cid)
                continue
            q.items.append(item)
            here.append(user)
        self.unfinished.setdefault((sender, cid), {})["G"] = item
        self._kept_group(here, item, on_durable)
        self.counts["put"] += len(here)
        if self.on_ready is not None:
            for user in here:
                self.on_ready(user)
        return item

    def fanouts(self):
        """The keys (sender, cid) of the group fan-outs not yet finished here."""
        return list(self.unfinished)

    def has_copy(self, key):
        """Whether this spool holds the copy (G) of the fan-out ``key``."""
        return "G" in self.unfinished.get(key, ())

    def delivered(self, user, seq):
        """Whether the item ``seq`` of ``user`` (one that was queued) reached one of their devices."""
        q = self.queues.get(user)
        return q is None or seq <= q.delivered or not q.items or seq < q.items[0].seq

    def acked_by(self, user, device, seq):
        """Whether ``device`` of ``user`` has acked the item ``seq`` (one that was queued), or
        needs it no more (it went, or the device was linked after it)."""
        q = self.queues.get(user)
        if q is None or not q.items or seq < q.items[0].seq:
            return True
        c = q.cursors.get(device)
        return c is not None and seq <= c.acked

    def purge(self, user):
        """Drop every item queued for ``user`` (an operator's purge, a deleted account); returns
        the items. A device acking them later acks nothing."""
        q = self.queues.pop(user, None)
        if q is None or not q.items:
            return []
        items = list(q.items)
        self._deleted(user, items)
        self.counts["purged"] += len(items)
        return items

    # --- devices -------------------------------------------------------------------

    def login(self, user, device):
        """``device`` connected: what it was sent and did not ack goes again. Returns how many
        items wait for it."""
        q = self.queues.get(user)
        if q is None:
            return 0
        c = q.cursor(device)
        c.sent = 0
        return len(q.items) - c.pos

    def next_batch(self, user, device, window, budget=None):
        """The items to send ``device`` now, marked sent: those after what it was sent, while it
        has fewer than ``window`` unacked and (with ``budget``) while the frames before the last
        one hold fewer than ``budget`` bytes. Items for another device (``direct``) count as sent
        but are not returned; at the front of what the device has to ack they count as acked."""
        q = self.queues.get(user)
        if q is None:
            return []
        c = q.cursor(device)
        items, out, passed = q.items, [], c.pos
        while not c.sent and c.pos < len(items) and not for_device(items[c.pos], device):
            c.pos += 1
            c.acked = items[c.pos - 1].seq
        if c.pos != passed:
            self._collect(user, q, (device,))
            if self.queues.get(user) is not q:
                return []
        i, stop = c.pos + c.sent, min(len(items), c.pos + window)
        while i < stop and (budget is None or budget > 0):
            item = items[i]
            i += 1
            if for_device(item, device):
                out.append(item)
                if budget is not None:
                    budget -= len(item.frame) + 4
        c.sent = i - c.pos
        return out

    def unacked(self, user, device):
        """Items sent to ``device`` on its connection and not acked yet."""
        q = self.queues.get(user)
        c = q.cursors.get(device) if q is not None else None
        return c.sent if c is not None else 0

    def ack(self, user, device, upto):
        """``device`` has every item up to seq ``upto``: move its cursor past those it was sent.

        Returns an :class:`Acked` whose ``items`` reached a device for the first time: the
        router stores their ✓✓ receipts and then calls :meth:`release`; only then may the
        items go (once every linked device acked them), so a crash in between delivers them
        again (same seq: the device skips them and acks again) instead of losing a receipt.
        """
        q = self.queues.get(user)
        c = q.cursors.get(device) if q is not None else None
        if c is None:
            return Acked(user, device)
        items, start = q.items, c.pos
        while c.sent and c.pos < len(items) and (items[c.pos].seq <= upto or not for_device(items[c.pos], device)):
            c.pos += 1
            c.sent -= 1
        if c.pos == start:
            return Acked(user, device)
        c.acked = items[c.pos - 1].seq
        acked = Acked(user, device, c.acked)
        if c.acked > q.delivered:
            acked.items = [i for i in itertools.islice(items, start, c.pos) if i.seq > q.delivered]
            q.delivered = c.acked
            self.counts["acked"] += len(acked.items)
        self.held.setdefault(user, collections.deque()).append(acked)
        return acked

    def release(self, acked):
        """The ✓✓ receipts of ``acked`` are durable: settle it and every earlier ack of its user
        (in ack order), and delete what every linked device has now acked."""
        acked.released = True
        held, done = self.held.get(acked.user), []
        while held and held[0].released:
            done.append(held.popleft())
        if not held:
            self.held.pop(acked.user, None)
        q = self.queues.get(acked.user)
        if q is None or not done:
            return
        q.settled = max(q.settled, max(a.upto for a in done))
        self._collect(acked.user, q, {a.device for a in done})

    def link(self, user, device):
        """A new device of ``user``: it starts past every item queued so far."""
        q = self.queues.get(user)
        if q is not None and q.items:
            c = q.cursors[device] = Cursor(len(q.items), q.items[-1].seq)
            self._cursor_moved(user, device, c)

    def unlink(self, user, device):
        """``device`` is unlinked (its credential revoked): it holds nothing any more."""
        q = self.queues.get(user)
        if q is not None:
            q.cursors.pop(device, None)
            self._collect(user, q, ())

    # --- internals ---------------------------------------------------------------------

    def _collect(self, user, q, moved):
        """Delete the front items every linked device acked and whose ✓✓ are settled; keep the
        cursors of ``moved`` devices that are now past the front."""
        bound = q.settled
        for device in self.devices(user):
            c = q.cursors.get(device)
            bound = min(bound, c.acked if c is not None else 0)
        items, gone = q.items, []
        while items and items[0].seq <= bound:
            gone.append(items.popleft())
        if gone:
            for c in q.cursors.values():
                c.shift(len(gone))
            self._deleted(user, gone)
        if items:
            for device in moved:
                c = q.cursors.get(device)
                if c is not None and c.acked >= items[0].seq:
                    self._cursor_moved(user, device, c)
        elif user not in self.held:
            del self.queues[user]

    def _remove(self, user, item):
        """Take ``item`` out of ``user``'s queue wherever it is (its write failed)."""
        q = self.queues.get(user)
        if q is None or item not in q.items:
            return False
        idx = q.items.index(item)
        del q.items[idx]
        for c in q.cursors.values():
            if idx < c.pos:
                c.pos -= 1
            elif idx < c.pos + c.sent:
                c.sent -= 1
        return True

    def _expire_front(self, user, q, cutoff):
        """Drop the front items stamped before ``cutoff`` (ms); returns them."""
        gone = []
        while q.items and q.items[0].ts < cutoff:
            gone.append(q.items.popleft())
        if gone:
            for c in q.cursors.values():
                c.shift(len(gone))
            self._deleted(user, gone)
            if not q.items and user not in self.held:
                del self.queues[user]
        return gone

    def _item(self, kind, sender, cid, frame, group=None):
        """A new Item stamped with the next seq and the time: ``frame`` is a dict (packed with
        both), a protocol.Template (stamped), or bytes kept as they are (an intent's body)."""
        self.counter += 1
        seq, ts = self.counter, int(self.clock() * 1000)
        if type(frame) is dict:
            frame["seq"], frame["ts"] = seq, ts
            body = pack(frame)
        elif hasattr(frame, "stamp"):
            body = frame.stamp(seq, ts)
        else:
            body = frame
        return Item(seq, ts, kind, sender, cid, body, self._segment(), group)

    # --- hooks: how a spool keeps its queues -------------------------------------------

    def _segment(self):
        """Where a new item is kept (Item.seg)."""
        raise NotImplementedError

    def _kept(self, user, item, on_durable, lazy=False):
        """``item`` was queued for ``user``: keep it (soon, unless ``lazy``), then call
        ``on_durable(err)``."""
        raise NotImplementedError

    def _kept_group(self, users, item, on_durable):
        """The group copy ``item`` was queued for ``users``: keep it, then ``on_durable(err)``."""
        raise NotImplementedError

    def _deleted(self, user, items):
        """``items`` (the front of ``user``'s queue) are gone for good."""
        raise NotImplementedError

    def _cursor_moved(self, user, device, cursor):
        """``device`` of ``user`` is at ``cursor``, past the front of the queue: keep it."""
        raise NotImplementedError
