"""One offd spool: per-user queues in RAM, made durable by an append-only segment log.

The hub only touches memory: ``put`` stamps an item, queues it and hands its
record to the committer; a dedicated native thread writes and fsyncs whole
batches (group commit), so every item that arrived while the previous fsync
ran shares the next one. ``on_durable(err)`` fires on the hub after that fsync
(err is None) or after a failed write (err is the OSError; the batch is cut off
the file again and its items are taken out of their queues).

An item can be sent to its device as soon as it is queued: delivery to an
online recipient does not wait for the fsync (only the sender's ✓ does). A
kill -9 can then erase an item a device has already shown. Two rules keep
that from costing a loss or a duplicate (both were found by ops/chaos.py when
they were missing):

* a seq is never stamped twice: recovery moves the counter ``SEQ_GAP`` past
  the highest seq on disk, beyond any seq handed out before the crash, so a
  device never skips a new item as one it has seen;
* the sender, never ✓'d, retransmits with the same id, and the new copy gets a
  new seq: a device recognises it by (group, from, id) and only acks it
  (docs/PROTOCOL.md, "Exactly once on screen"; whatsup/client.py does this).

Deletion is cumulative per user (devices ack "everything up to seq N"), so a
queue is a deque consumed from the front. Segments are deleted oldest first
only: a delete record then never outlives the put it cancels. Compaction
rewrites the few live items of the oldest segment into the active one and
unlinks it once that rewrite is fsynced.
"""
import collections
import logging
import os
import time

from gevent.threadpool import ThreadPool

from ..batch import GroupCommitter
from ..datadir import fsync_dir
from ..protocol import pack
from . import record

log = logging.getLogger("whatsup.offd")
SEGMENT = "seg-{:010d}.log"
SEQ_GAP = 1 << 32  # recovery's counter jump: more than a node stamps between two fsyncs


class QueueFull(Exception):
    """The recipient already has offd.max_queue items waiting."""


class Item:
    __slots__ = ("seq", "ts", "kind", "sender", "cid", "frame", "seg")

    def __init__(self, seq, ts, kind, sender, cid, frame, seg):
        self.seq, self.ts, self.kind, self.sender, self.cid, self.frame, self.seg = (
            seq, ts, kind, sender, cid, frame, seg)

    def __repr__(self):
        return f"<Item {self.kind} seq={self.seq} from={self.sender} id={self.cid}>"


class UserQueue:
    """A user's undelivered items in seq order; the first ``sent`` went to the current device."""
    __slots__ = ("items", "sent")

    def __init__(self):
        self.items = collections.deque()
        self.sent = 0

    def __len__(self):
        return len(self.items)

    def __repr__(self):
        return f"<UserQueue queued={len(self.items)} sent={self.sent}>"

    def unsent(self, n, budget=None):
        """Up to ``n`` items after those already sent, marking them sent; with
        ``budget``, only while the frames before the last one hold fewer than ``budget`` bytes."""
        items, out = self.items, []
        stop = min(len(items), self.sent + n)
        while self.sent < stop and (budget is None or budget > 0):
            item = items[self.sent]
            out.append(item)
            self.sent += 1
            if budget is not None:
                budget -= len(item.frame) + 4
        return out


class Acked:
    """Items a device acked whose delete record waits for :meth:`Spool.release`."""
    __slots__ = ("user", "items", "released")

    def __init__(self, user):
        self.user, self.items, self.released = user, [], False

    def __repr__(self):
        return f"<Acked {self.user} items={len(self.items)} released={self.released}>"


class Segment:
    __slots__ = ("sid", "size", "live", "base", "moved", "carried")

    def __init__(self, sid, size=0, live=0, base=None):
        self.sid, self.size, self.live = sid, size, live
        self.base = base  # the seq counter when it started: items stamped later are in it
        self.moved = 0    # bytes compaction moved into it (live items, carried ids)
        self.carried = 0  # of which carried ids: the next compaction writes them again anyway

    def __repr__(self):
        return f"<Segment {self.sid} size={self.size} live={self.live}>"


class Spool:
    """A spool directory. Create, then ``open()`` (recovery), then use from the hub."""

    def __init__(self, directory, segment_bytes, max_queue, expiry_days):
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.max_queue = max_queue
        self.expiry = expiry_days * 86400.0
        self.queues = {}
        self.held = {}               # user -> deque of Acked, in ack order
        self.on_ready = None         # callable(user): a new item for user can be sent
        # callable(spool, upto) -> (sender, cid, user, seq, ts) of the message ids still to be
        # deduplicated among those stamped up to seq ``upto``: compaction writes them in an I
        # record, because it drops the P records a restart rebuilds the dedup window from (the
        # router's window, see Router.shard_up). None: nothing carried.
        self.carry = None
        self.segments = collections.OrderedDict()  # sid -> Segment, oldest first
        self.counter = 0
        self.recovered = []          # P records' (sender, cid, user, seq, ts) for dedup rebuild
        self.stats = collections.Counter()
        self._pool = ThreadPool(1)   # this spool's writer: a native thread owning the fds
        self._fds = {}
        self._log = None

    def __repr__(self):
        return (f"<Spool {self.dir} users={len(self.queues)} queued={self.queued()} "
                f"segments={len(self.segments)} log={self._log!r}>")

    # --- life cycle -------------------------------------------------------------

    def open(self):
        os.makedirs(self.dir, exist_ok=True)
        self._pool.apply(self._recover)
        self._log = GroupCommitter(self._pool, self._write, f"offd {self.dir}")
        self._start_segment()
        return self

    def close(self):
        """Flush what is pending, then stop the writer."""
        self._log.stop()
        self._pool.apply(self._close_fds)
        self._pool.kill()

    def flush(self, timeout=30.0):
        """Wait until everything handed to the spool so far is fsynced."""
        return self._log.flush(timeout)

    # --- the hub's API -------------------------------------------------------------

    def queue(self, user):
        q = self.queues.get(user)
        if q is None:
            q = self.queues[user] = UserQueue()
        return q

    def queued(self):
        return sum(len(q) for q in self.queues.values())

    def put(self, user, kind, frame, sender=None, cid=None, on_durable=None, force=False):
        """Queue ``frame`` (a dict, seq and ts are stamped into it; or a protocol.Template) for ``user``.

        Returns the Item. Raises QueueFull unless ``force`` (receipts are forced:
        refusing one would lose it, and they are bounded by the messages sent).
        """
        q = self.queue(user)
        if not force and len(q.items) >= self.max_queue:
            raise QueueFull(user)
        self.counter += 1
        seq, ts = self.counter, int(time.time() * 1000)
        if type(frame) is dict:
            frame["seq"], frame["ts"] = seq, ts
            body = pack(frame)
        else:
            body = frame.stamp(seq, ts)
        seg = self._active
        item = Item(seq, ts, kind, sender, cid, body, seg.sid)
        q.items.append(item)
        seg.live += 1
        self._append(record.put(user, seq, ts, kind, sender, cid, body),
                     lambda err: self._durable(user, item, err, on_durable))
        self.stats["put"] += 1
        if self.on_ready is not None:
            self.on_ready(user)
        return item

    def ack(self, user, upto):
        """The device has every item up to ``upto``: take those it was sent out of the queue.

        Returns an :class:`Acked` (empty when nothing was acked). The items'
        delete record is written only by :meth:`release`: the router releases
        once the ✓✓ receipts the ack causes are durable, so a crash in between
        delivers the items again (same seq: the device skips them and acks
        again) instead of losing those receipts. Until then compaction keeps
        the items' records.
        """
        q = self.queues.get(user)
        acked = Acked(user)
        if q is None:
            return acked
        items = q.items
        while q.sent and items and items[0].seq <= upto:
            acked.items.append(items.popleft())
            q.sent -= 1
        if acked.items:
            self.held.setdefault(user, collections.deque()).append(acked)
            self.stats["acked"] += len(acked.items)
        if not items:
            self.queues.pop(user, None)
        return acked

    def release(self, acked):
        """Write the delete record of ``acked``, after those of every earlier ack of its user
        (a delete record is cumulative: "everything up to seq N")."""
        acked.released = True
        held = self.held.get(acked.user)
        while held and held[0].released:
            items = held.popleft().items
            self._forget(items)
            self._append(record.delete(acked.user, items[-1].seq))
        if not held:
            self.held.pop(acked.user, None)

    def purge(self, user):
        """Drop every item queued for ``user`` (an operator's purge, a deleted account) with one
        delete record; returns the items. A device acking them later acks nothing."""
        q = self.queues.pop(user, None)
        if q is None or not q.items:
            return []
        items = list(q.items)
        self._forget(items)
        self._append(record.delete(user, items[-1].seq))
        self.stats["purged"] += len(items)
        return items

    # --- durability -------------------------------------------------------------

    def _append(self, data, waiter=None, moved=False, carried=False):
        """Hand ``data`` to the writer for the active segment, which rolls once it holds
        segment_bytes of *new* records. What compaction moves into it (``moved``: live
        items, carried ids) does not count: otherwise more live data than segment_bytes
        would roll the segment it was moved to, and the next pass would move it again,
        rewriting all of it on every maintenance pass, forever. ``carried`` (ids) also
        counts as moved."""
        seg = self._active
        self._log.add((seg.sid, data), waiter)
        seg.size += len(data)
        if carried:
            seg.carried += len(data)
        if moved or carried:
            seg.moved += len(data)
        elif seg.size - seg.moved >= self.segment_bytes:
            self._start_segment()

    def _durable(self, user, item, err, on_durable):
        if err is not None:
            q = self.queues.get(user)
            if q is not None and item in q.items:
                idx = q.items.index(item)
                del q.items[idx]
                if idx < q.sent:
                    q.sent -= 1
                self._forget([item])
        if on_durable is not None:
            on_durable(err)

    # --- runs on the writer thread ----------------------------------------------------

    def _path(self, sid):
        return os.path.join(self.dir, SEGMENT.format(sid))

    def _fd(self, sid):
        fd = self._fds.get(sid)
        if fd is None:
            fd = self._fds[sid] = os.open(self._path(sid), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fsync_dir(self.dir)  # the new segment's name must survive a crash too
        return fd

    def _write(self, batch):
        """Append and fsync a batch; on error cut every touched file back and re-raise."""
        touched = {}
        try:
            for sid, data in batch:
                fd = self._fd(sid)
                if sid not in touched:
                    touched[sid] = os.fstat(fd).st_size
                os.write(fd, data)  # short writes of regular files only happen on error
            for sid in touched:
                os.fsync(self._fds[sid])
        except OSError:
            for sid, size in touched.items():
                try:
                    os.ftruncate(self._fds[sid], size)
                except OSError:
                    pass
            raise

    def _unlink(self, sids):
        for sid in sids:
            fd = self._fds.pop(sid, None)
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(self._path(sid))
            except FileNotFoundError:
                pass

    def _close_fds(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _recover(self):
        """Rebuild the queues from the segment files (writer thread, before serving)."""
        sids = sorted(int(n[4:14]) for n in os.listdir(self.dir)
                      if n.startswith("seg-") and n.endswith(".log") and n[4:14].isdigit())
        found, wm = {}, {}
        for sid in sids:
            path = self._path(sid)
            with open(path, "rb") as f:
                data = f.read()
            records, bad, end = record.scan(data)
            if bad:
                self.stats["bad_records"] += bad
                log.error("offd %s: %d damaged record region(s) skipped in %s", self.dir, bad, path)
            if end < len(data):
                self.stats["torn_bytes"] += len(data) - end
                log.warning("offd %s: cut a torn tail of %d bytes off %s", self.dir, len(data) - end, path)
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            self.segments[sid] = Segment(sid, end)
            for rec in records:
                try:
                    self._replay(sid, rec, found, wm)
                except (ValueError, TypeError, IndexError, KeyError) as exc:
                    # intact bytes, unknown shape (a bug or another version wrote it): skip it
                    self.stats["bad_records"] += 1
                    log.error("offd %s: skipped a record of unexpected shape in %s: %.100r (%s)",
                              self.dir, path, rec, exc)
        for user, by_seq in found.items():
            if not by_seq:
                continue  # every item of this user was deleted: no empty queue in RAM
            q = self.queue(user)
            for seq in sorted(by_seq):
                item = by_seq[seq]
                q.items.append(item)
                self.segments[item.seg].live += 1
        if sids:
            self.counter += SEQ_GAP
        self.stats["recovered"] = self.queued()

    def _replay(self, sid, rec, found, wm):
        op = rec[0]
        if op == "B":
            self.counter = max(self.counter, rec[1])
        elif op == "P":
            _, user, seq, ts, kind, sender, cid, frame = rec
            self.counter = max(self.counter, seq)
            if cid is not None:
                self.recovered.append((sender, cid, user, seq, ts))
            if seq > wm.get(user, 0):
                found.setdefault(user, {}).setdefault(seq, Item(seq, ts, kind, sender, cid, frame, sid))
        elif op == "I":
            _, sender, user, entries = rec
            self.recovered.extend((sender, cid, user, seq, ts) for cid, seq, ts in entries)
        elif op == "D":
            _, user, upto = rec
            wm[user] = max(wm.get(user, 0), upto)
            by_seq = found.get(user)
            if by_seq:
                for seq in [s for s in by_seq if s <= upto]:
                    del by_seq[seq]

    # --- segments, compaction, expiry -------------------------------------------------

    def _start_segment(self):
        sid = (next(reversed(self.segments)) + 1) if self.segments else 1
        self.segments[sid] = self._active = Segment(sid, base=self.counter)
        self._append(record.base(self.counter))

    def _forget(self, items):
        segs = self.segments
        for item in items:
            segs[item.seg].live -= 1

    def maintain(self):
        """Expire old items, roll an all-dead active segment, compact the oldest one.

        An all-dead active segment rolls once what compaction would not write again
        (everything but the carried ids: items moved into it that died since count)
        is worth a rewrite; counting only new records left moved-then-acked items on
        disk for good."""
        self._expire()
        active = self._active
        if active.live == 0 and active.size - active.carried >= min(self.segment_bytes, 2 ** 20):
            self._start_segment()
        self._compact()

    def _expire(self):
        if self.expiry <= 0:
            return
        cutoff = (time.time() - self.expiry) * 1000
        for user, q in list(self.queues.items()):
            gone = []
            while q.items and q.items[0].ts < cutoff:
                gone.append(q.items.popleft())
                q.sent = max(0, q.sent - 1)
            if gone:
                self._forget(gone)
                self._append(record.delete(user, gone[-1].seq))
                self.stats["expired"] += len(gone)
                log.warning("offd: expired %d undelivered item(s) for %s (older than %.0f days)",
                            len(gone), user, self.expiry / 86400)
            if not q.items:
                del self.queues[user]

    def _live(self):
        """(user, item) for every item whose record must be kept: queued or acked but held."""
        for user, q in self.queues.items():
            for item in q.items:
                yield user, item
        for user, held in self.held.items():
            for acked in held:
                for item in acked.items:
                    yield user, item

    def _carry_ids(self):
        """Write the ids ``carry`` names into the active segment, grouped by conversation."""
        by_pair = {}
        for sender, cid, user, seq, ts in self.carry(self, self._active.base):
            by_pair.setdefault((sender, user), []).append((cid, seq, ts))
        for (sender, user), entries in by_pair.items():
            for i in range(0, len(entries), record.IDS_PER_RECORD):
                self._append(record.ids(sender, user, entries[i:i + record.IDS_PER_RECORD]), carried=True)
            self.stats["carried_ids"] += len(entries)

    def _compact(self):
        """Rewrite the live items of every non-active segment forward, then unlink those segments."""
        old = [s for s in self.segments.values() if s is not self._active]
        if not old:
            return
        sids = {s.sid for s in old}
        moved = 0
        if any(s.live for s in old):
            for user, item in self._live():
                if item.seg in sids:
                    self.segments[item.seg].live -= 1
                    item.seg = self._active.sid
                    self._active.live += 1
                    self._append(record.put(user, item.seq, item.ts, item.kind, item.sender,
                                            item.cid, item.frame), moved=True)
                    moved += 1
        if self.carry is not None:
            self._carry_ids()
        for sid in sids:
            del self.segments[sid]
        self.stats["compactions"] += 1
        self.stats["compacted_items"] += moved
        self._log.add(waiter=lambda err: err is None and self._pool.spawn(self._unlink, sorted(sids)))
