"""One offd spool: per-user queues in RAM (queues.py), made durable by an append-only segment log.

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

Deletion is cumulative per user (devices ack "everything up to seq N"; an item
goes when every linked device acked it, queues.py), so a queue is a deque
consumed from the front, and ``wm[user]`` (the highest seq deleted) tells
whether a record is still live. A device that acked past the front has its
cursor in an A record (read back by recovery, carried by compaction). A group message's copies on
one shard are one Item (one seq, one frame, one G record) that every member's
queue references: a queued group copy costs one deque slot (8 bytes), not a
frame. Its fan-out is durable in F/G/E records (whatsup/routing/router.py, "Groups").

Maintenance costs O(work done) and yields to the hub between slices of
``SLICE`` items or ``PACE`` seconds, whichever ends first (:class:`Pace`; no
pass may hold the hub more than a few ms): compaction
rewrites the live records of the non-active segments into the active one
(walking each queue only as far as items stamped before the active segment),
writes the dedup window entries their records made that are still in their
sender's window (:meth:`anchor`) to the shard's ids file, then unlinks them
once that is fsynced; expiry visits only the queues whose front is due (a heap
of the queues' fronts, :meth:`Queues.expire`), in slices.

The ids file (``ids-N.log``, H records only) is what keeps the dedup window
across restarts once the records that made its ids are gone. It is not
compacted with the segments: when it has grown to a segment's size and twice
what its last rewrite kept, the entries still in their windows are written to
a new one (read off the hub, decoded on it in slices) and the old one is
unlinked. A rewrite writes at most twice what was appended since the last one,
so an id is written at most about three times on average, however long it
stays in its window. Carried into the
active segment instead, as nodes before did, every id was written again at
every compaction for as long as it stayed in the window (hours): after 20
minutes of random 1:1 traffic, 31 million ids carried for 5 million messages,
each batch of them in the commit queue ahead of the shard's ✓s.
"""
import collections
import errno
import gc
import itertools
import logging
import os
import time

import gevent
import msgpack
from gevent.event import AsyncResult

from ..batch import GroupCommitter
from ..worker import Worker
from ...runtime.process import let_others_run
from ..datadir import fsync_dir
from ...routing.dedup import ENTRY, digest, digests, unpack_entries
from . import record
from .queues import Cursor, Item, Queues

log = logging.getLogger("whatsup.offd")
SEGMENT = "seg-{:010d}.log"
IDS = "ids-{:010d}.log"  # ids file N is written as sid -N
SEQ_GAP = 1 << 32  # recovery's counter jump: more than a node stamps between two fsyncs
SLICE = 100        # items (or senders) maintenance handles between two yields to the hub,
PACE = 0.005       # or seconds it works between them, whichever comes first


class Pace:
    """Where a maintenance pass yields to the hub: after SLICE steps or PACE seconds, whichever
    comes first. Counting alone is not enough: a step's cost varies (moving a group copy writes a
    record naming every member), and on a busy machine a slice of CPU takes longer still."""
    __slots__ = ("n", "since", "clock", "pause")

    def __init__(self, clock=time.perf_counter, pause=let_others_run):
        self.n, self.clock, self.pause = 0, clock, pause
        self.since = clock()

    def step(self):
        self.n += 1
        if self.n % SLICE == 0 or self.clock() - self.since >= PACE:
            self.pause()
            self.since = self.clock()


class Watch:
    """A waiter for many writes: whether any failed (compaction unlinks what it rewrote only if
    none did; a failed batch is cut off the file, and later ones may still succeed)."""
    __slots__ = ("failed",)

    def __init__(self):
        self.failed = False

    def __call__(self, err):
        if err is not None:
            self.failed = True


class Segment:
    __slots__ = ("sid", "size", "live", "base", "moved", "ids", "closing")

    def __init__(self, sid, size=0, live=0, base=None):
        self.sid, self.size, self.live = sid, size, live
        self.base = base  # the seq counter when it started: items stamped later are in it
        self.moved = 0    # bytes compaction moved into it (live items)
        self.ids = {}     # sender -> bytearray of 8-byte digests: dedup entries whose record is in it
        self.closing = False  # being compacted: new anchors go to the active segment

    def __repr__(self):
        return f"<Segment {self.sid} size={self.size} live={self.live}>"


class IdsFile:
    """The ids file compaction writes carried dedup entries to (``sid`` -N for ``ids-N.log``)."""
    __slots__ = ("sid", "size", "kept")

    def __init__(self, sid, size=0):
        self.sid, self.size = sid, size
        self.kept = size  # bytes its rewrite wrote (or recovery found): it is rewritten at twice that

    def __repr__(self):
        return f"<IdsFile {-self.sid} size={self.size} kept={self.kept}>"


class Spool(Queues):
    """A spool directory (api.Store). Create, then ``open()`` (recovery), then use from the hub.

    Callbacks: ``on_ready(user)`` an item for user can be sent; ``devices(user)`` the user's
    linked device ids (queues.py); ``carry(sender, digests)`` -> the packed dedup entries of
    those digests still in the sender's window (Dedup.pick): compaction writes them in H
    records to the ids file, because it drops the records a restart rebuilds the window
    from (None: nothing carried)."""
    remember = 4096  # dedup entries per sender that recovery hands on (session.dedup_window)

    def __init__(self, directory, segment_bytes, max_queue, expiry_days, devices=None, on_ready=None,
                 carry=None, commit_interval=0.0):
        super().__init__(max_queue, devices, on_ready)
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.expiry = expiry_days * 86400.0
        self.wm = {}                 # user -> highest seq whose delete record was written
        self.incomplete = {}         # (sender, cid) -> F Item: recovery found no E (see Router.shard_up)
        self.carry = carry
        self.commit_interval = commit_interval  # GroupCommitter.interval
        self.segments = collections.OrderedDict()  # sid -> Segment, oldest first
        self.recovered = {}          # sender -> [(ts, digest, sid, seq)] oldest first, for the dedup window
        self._pool = Worker(f"offd {directory}")  # this spool's writer: a native thread owning the fds
        self._fds = {}               # sid -> fd (writer thread only)
        self._sizes = {}             # sid -> bytes in the file: where a failed batch is cut back to
        self._log = None
        self._ids = None             # the IdsFile carried entries go to
        self._old_ids = []           # sids of ids files to rewrite into it, then unlink

    def __repr__(self):
        return (f"<Spool {self.dir} users={len(self.queues)} queued={self.queued()} "
                f"segments={len(self.segments)} log={self._log!r}>")

    def stats(self):
        """The counts, with the group commit's figures (``commit_*``) and the spool's size."""
        log_ = self._log
        return {**self.counts, "queued": self.queued(), "users": len(self.queues), "segments": len(self.segments),
                "counter": self.counter,
                "commit_batches": log_.batches if log_ else 0, "commit_failures": log_.failures if log_ else 0,
                "commit_seconds": log_.seconds if log_ else 0.0, "ids_bytes": self._ids.size if self._ids else 0}

    def take_recovered(self):
        """What recovery found of the dedup windows (sender -> [(ts, digest, sid, seq)]), once."""
        found, self.recovered = self.recovered, {}
        return found

    # --- life cycle -------------------------------------------------------------

    def open(self):
        os.makedirs(self.dir, exist_ok=True)
        self._pool.apply(self._recover)
        self.refront()
        self._log = GroupCommitter(self._pool, self._write, f"offd {self.dir}", self.commit_interval)
        self._start_segment()
        if self._ids is None:
            self._ids = IdsFile(-1)  # its file is made by the first entries carried to it
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

    def intent(self, gid, sender, cid, body, members, on_durable):
        """Write a group fan-out's intent (F): the message and every member it goes to."""
        item = self._item("fanout", sender, cid, body, (gid, list(members)))
        self._active.live += 1
        self.unfinished.setdefault((sender, cid), {})["F"] = item
        self._append(record.intent(item.seq, item.ts, gid, sender, cid, body, item.group[1]), on_durable)
        return item

    def done(self, sender, cid, on_durable):
        """Write that the fan-out of (sender, cid) has every G record durable (E)."""
        self.incomplete.pop((sender, cid), None)
        self._append(record.done(sender, cid), on_durable)

    def finished(self, key):
        """The fan-out ``key`` is done and its E record durable: its records may go."""
        f = self.unfinished.pop(key, {}).get("F")
        if f is not None and f.seg is not None:
            self._forget_refs(f, 1)

    def anchor(self, sid, sender, h):
        """Dedup entry ``h`` (its digest) of ``sender`` was made by a record in segment ``sid``:
        compaction of that segment carries it (the active one does, if ``sid`` is gone or being
        compacted). An ids file's entries (``sid`` < 0) are read back from it when it is rewritten."""
        if sid < 0:
            return
        seg = self.segments.get(sid)
        if seg is None or seg.closing:
            seg = self._active
        hs = seg.ids.get(sender)
        if hs is None:
            seg.ids[sender] = bytearray(h)
        else:
            hs += h

    # --- durability -------------------------------------------------------------

    def _segment(self):
        return self._active.sid

    def _kept(self, user, item, on_durable, lazy=False):
        self._active.live += 1
        self._append(record.put(user, item.seq, item.ts, item.kind, item.sender, item.cid, item.frame),
                     lambda err: self._durable((user,), item, err, on_durable), lazy=lazy)

    def _kept_group(self, users, item, on_durable):
        self._active.live += len(users)
        gid, _ = item.group
        self._append(record.group(item.seq, item.ts, gid, item.sender, item.cid, item.frame, users),
                     lambda err: self._durable(users, item, err, on_durable))

    def _cursor_moved(self, user, device, cursor, moved=False):
        cursor.seg = self._active.sid
        self._append(record.cursor(user, device, cursor.acked), moved=moved, lazy=True)

    def _append(self, data, waiter=None, moved=False, lazy=False):
        """Hand ``data`` to the writer for the active segment, which rolls once it holds
        segment_bytes of *new* records. What compaction moves into it (``moved``: live
        items) does not count: otherwise more live data than segment_bytes would roll the
        segment it was moved to, and the next pass would move it again, rewriting all of it
        on every maintenance pass, forever. ``lazy``: a record no one waits for
        (GroupCommitter.add)."""
        seg = self._active
        self._log.add((seg.sid, data), waiter, lazy)
        seg.size += len(data)
        if moved:
            seg.moved += len(data)
        elif seg.size - seg.moved >= self.segment_bytes:
            self._start_segment()

    def _durable(self, users, item, err, on_durable):
        if err is not None and item.seg is not None:  # the write was cut off the file again
            for user in users:
                if self._remove(user, item):
                    self._forget([item])
            item.seg = None
        if on_durable is not None:
            on_durable(err)

    def _deleted(self, user, items):
        """``items`` (the front of ``user``'s queue) are gone: write their delete record."""
        self._forget(items)
        upto = items[-1].seq
        self.wm[user] = max(self.wm.get(user, 0), upto)
        self._append(record.delete(user, upto), lazy=True)

    def _live(self, user, item):
        """Whether ``user``'s reference to ``item`` must be kept (not deleted)."""
        return item.seg is not None and item.seq > self.wm.get(user, 0)

    # --- runs on the writer thread ----------------------------------------------------

    def _path(self, sid):
        return os.path.join(self.dir, IDS.format(-sid) if sid < 0 else SEGMENT.format(sid))

    def _fd(self, sid):
        """The segment's fd, opened O_DSYNC: a write returns once its data (and the file's new
        size) is on disk, so a batch is one system call per file, not a write, an fstat and an
        fsync: each system call gives the GIL up, and taking it back from a busy hub costs the
        writer thread a wait and the hub a context switch."""
        fd = self._fds.get(sid)
        if fd is None:
            fd = self._fds[sid] = os.open(self._path(sid), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC,
                                          0o600)
            self._sizes[sid] = os.fstat(fd).st_size
            fsync_dir(self.dir)  # the new segment's name must survive a crash too
        return fd

    def _write(self, batch):
        """Append a batch durably (one synchronous write per file); on error cut every touched
        file back and re-raise."""
        chunks = {}
        for sid, data in batch:
            chunks.setdefault(sid, []).append(data)
        before = {}  # sid -> its size before this batch
        try:
            for sid, parts in chunks.items():
                fd = self._fd(sid)
                before[sid] = self._sizes[sid]
                data = b"".join(parts)
                if os.write(fd, data) != len(data):  # a regular file writes short only when it can't go on
                    raise OSError(errno.ENOSPC, f"short write to {self._path(sid)}")
                self._sizes[sid] += len(data)
        except OSError:
            for sid, size in before.items():  # the files written before the failure too
                self._sizes[sid] = size
                try:
                    os.ftruncate(self._fds[sid], size)
                except OSError:
                    pass
            raise

    def _unlink(self, sids):
        for sid in sids:
            fd = self._fds.pop(sid, None)
            self._sizes.pop(sid, None)
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
        self._sizes.clear()

    def _recover(self):
        """Rebuild the queues from the segment files (writer thread, before serving), with
        the cyclic GC paused, then frozen: recovery builds a million objects and nothing
        cyclic, and each full collection it would trigger, during recovery or after it, scans
        all of them holding the GIL (the hub's too) for 0.1-2 s (ops/offd_figures.py stall)."""
        paused = gc.isenabled()
        gc.disable()
        try:
            self._replay_segments()
            gc.freeze()
        finally:
            if paused:
                gc.enable()

    def _replay_segments(self):
        names = os.listdir(self.dir)
        sids = sorted(int(n[4:14]) for n in names
                      if n.startswith("seg-") and n.endswith(".log") and n[4:14].isdigit())
        idfiles = sorted((-int(n[4:14]) for n in names
                          if n.startswith("ids-") and n.endswith(".log") and n[4:14].isdigit()), reverse=True)
        found, wm, fanouts, done, ids, cursors = {}, self.wm, {}, set(), {}, {}
        for sid in idfiles + sids:  # an ids file holds H records only
            path = self._path(sid)
            with open(path, "rb") as f:
                data = f.read()
            records, bad, end = record.scan(data)
            if bad:
                self.counts["bad_records"] += bad
                log.error("offd %s: %d damaged record region(s) skipped in %s", self.dir, bad, path)
            if end < len(data):
                self.counts["torn_bytes"] += len(data) - end
                log.warning("offd %s: cut a torn tail of %d bytes off %s", self.dir, len(data) - end, path)
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            if sid < 0:  # oldest first: the newest takes new entries, the others are rewritten into it
                if self._ids is not None:
                    self._old_ids.append(self._ids.sid)
                self._ids = IdsFile(sid, end)
            else:
                self.segments[sid] = Segment(sid, end)
            records.reverse()
            while records:  # popped: a segment's records are freed as they go, not in one 15 ms run
                rec = records.pop()
                try:
                    self._replay(sid, rec, found, wm, fanouts, done, ids, cursors)
                except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
                    # intact bytes, unknown shape (a bug or another version wrote it): skip it
                    self.counts["bad_records"] += 1
                    log.error("offd %s: skipped a record of unexpected shape in %s: %.100r (%s)",
                              self.dir, path, rec, exc)
        while found:  # popped: freed as it goes, not all at once when ``found`` goes (40 ms, GIL held)
            user, by_seq = found.popitem()
            if not by_seq:
                continue  # every item of this user was deleted: no empty queue in RAM
            q = self.queue(user)
            for seq in sorted(by_seq):
                item = by_seq[seq]
                q.items.append(item)
                self.segments[item.seg].live += 1
            self._place(q, cursors.get(user, {}))
        for key, f in fanouts.items():
            if key in done:
                self.unfinished.pop(key, None)  # its G records here are settled too
            else:
                self.incomplete[key] = f
                self.unfinished.setdefault(key, {})["F"] = f
                self.segments[f.seg].live += 1
        for key in done:
            self.unfinished.pop(key, None)
        for sender, entries in ids.items():
            entries.sort()
            self.recovered[sender] = entries if len(entries) <= self.remember else entries[-self.remember:]
        if sids:
            self.counter += SEQ_GAP
        self.counts["recovered"] = self.queued()

    def _replay(self, sid, rec, found, wm, fanouts, done, ids, cursors):
        op = rec[0]
        if op == "B":
            self.counter = max(self.counter, rec[1])
        elif op == "P":
            _, user, seq, ts, kind, sender, cid, frame = rec
            self.counter = max(self.counter, seq)
            if kind == "gmsg" and cid is not None:  # an older node's group copy: the window knows it by group
                ids.setdefault(sender, []).append((ts, digest(msgpack.unpackb(frame)["group"], cid), sid, 0))
            elif cid is not None and kind != "direct":  # a direct item's cid is the device it is for
                ids.setdefault(sender, []).append((ts, digest(user, cid), sid, seq))
            if seq > wm.get(user, 0):
                found.setdefault(user, {}).setdefault(seq, Item(seq, ts, kind, sender, cid, frame, sid))
        elif op == "G":
            _, seq, ts, gid, sender, cid, frame, users = rec
            self.counter = max(self.counter, seq)
            ids.setdefault(sender, []).append((ts, digest(gid, cid), sid, 0))
            item = self.unfinished.setdefault((sender, cid), {}).setdefault(
                "G", Item(seq, ts, "gmsg", sender, cid, frame, sid, (gid, users)))
            for user in users:
                if seq > wm.get(user, 0):
                    found.setdefault(user, {}).setdefault(seq, item)
        elif op == "F":
            _, seq, ts, gid, sender, cid, body, members = rec
            self.counter = max(self.counter, seq)
            ids.setdefault(sender, []).append((ts, digest(gid, cid), sid, 0))
            fanouts.setdefault((sender, cid), Item(seq, ts, "fanout", sender, cid, body, sid, (gid, members)))
        elif op == "E":
            done.add((rec[1], rec[2]))
        elif op == "H":
            _, sender, entries = rec
            ids.setdefault(sender, []).extend((ts, h, sid, seq) for h, ts, seq in unpack_entries(entries))
        elif op == "I":
            _, sender, user, entries = rec
            ids.setdefault(sender, []).extend((ts, digest(user, cid), sid, seq) for cid, seq, ts in entries)
        elif op == "A":
            _, user, device, upto = rec
            at = cursors.setdefault(user, {})
            if upto >= at.get(device, (0, sid))[0]:
                at[device] = (upto, sid)
        elif op == "D":
            _, user, upto = rec
            wm[user] = max(wm.get(user, 0), upto)
            by_seq = found.get(user)
            if by_seq:
                for seq in [s for s in by_seq if s <= upto]:
                    del by_seq[seq]
        else:
            raise ValueError(f"unknown record type {op!r}")

    @staticmethod
    def _place(q, acked):
        """Put back the cursors of the devices that acked past the front of ``q`` (A records):
        what they acked was delivered and its ✓✓ durable (an A record is written on release)."""
        first = q.items[0].seq
        for device, (upto, sid) in acked.items():
            if upto >= first:
                q.cursors[device] = Cursor(q.index(upto), upto, sid)
                q.delivered = q.settled = max(q.settled, upto)

    # --- segments, compaction, expiry -------------------------------------------------

    def _start_segment(self):
        sid = (next(reversed(self.segments)) + 1) if self.segments else 1
        self.segments[sid] = self._active = Segment(sid, base=self.counter)
        self._append(record.base(self.counter))

    def _forget(self, items):
        segs = self.segments
        for item in items:
            if item.seg is not None:
                segs[item.seg].live -= 1

    def _forget_refs(self, item, n):
        self.segments[item.seg].live -= n

    def maintain(self):
        """Expire old items, roll an all-dead active segment, compact the others (in slices
        that yield to the hub).

        An all-dead active segment rolls once it is worth a rewrite (items moved into it
        that died since count: counting only new records left moved-then-acked items on
        disk for good)."""
        self._expire()
        active = self._active
        if active.live == 0 and active.size >= min(self.segment_bytes, 2 ** 20):
            self._start_segment()
        self._compact()
        if self.carry is not None:
            self._rewrite_ids()

    def _expire(self):
        if self.expiry <= 0:
            return
        pace = Pace()
        for user, gone in self.expire((self.clock() - self.expiry) * 1000):
            pace.step()
            if gone:
                self.counts["expired"] += len(gone)
                log.warning("offd: expired %d undelivered item(s) for %s (older than %.0f days)",
                            len(gone), user, self.expiry / 86400)

    def _old_items(self, bound, pace):
        """(user, item) for every reference stamped up to seq ``bound`` (those that may be in a
        segment older than the active one): each queue's front (acked items stay there until
        every device acked them), the unfinished fan-outs (user None). Yields to the hub as
        ``pace`` says, per queue (the caller per item)."""
        for user in list(self.queues):
            q = self.queues.get(user)
            if q is None:
                continue
            for item in list(itertools.takewhile(lambda i: i.seq <= bound, q.items)):
                yield user, item
            pace.step()
        for parts in list(self.unfinished.values()):
            for item in parts.values():
                yield None, item

    def _move(self, user, item, watch):
        """Rewrite ``item``'s record (for ``user``'s queue, or a shared one) into the active segment."""
        active = self._active
        if item.kind == "fanout":
            gid, members = item.group
            data, refs = record.intent(item.seq, item.ts, gid, item.sender, item.cid, item.frame, members), 1
        elif item.group is not None:
            gid, users = item.group
            users = [u for u in users if self._live(u, item)]
            item.group = (gid, users)
            data, refs = record.group(item.seq, item.ts, gid, item.sender, item.cid, item.frame, users), len(users)
        else:
            data, refs = record.put(user, item.seq, item.ts, item.kind, item.sender, item.cid, item.frame), 1
        self._forget_refs(item, refs)
        item.seg = active.sid
        active.live += refs
        self._append(data, watch, moved=True)

    def _carry_cursors(self, sids):
        """Write again the A records in the ``sids`` segments of the cursors still past their
        queue's front (those of unlinked devices are dropped)."""
        pace = Pace()
        for user in list(self.queues):
            q = self.queues.get(user)
            if q is not None and q.items and q.cursors:
                linked = self.devices(user)
                for device, c in list(q.cursors.items()):
                    if c.seg in sids and device in linked and c.acked >= q.items[0].seq:
                        self._cursor_moved(user, device, c, moved=True)
            pace.step()

    def _carry_ids(self, old, watch):
        """Write the dedup entries anchored in the ``old`` segments that are still in their
        sender's window to the ids file."""
        pace = Pace()
        for seg in old:
            for sender, hs in seg.ids.items():
                self._carry(sender, bytes(hs), watch)
                pace.step()

    def _carry(self, sender, hs, watch):
        entries = self.carry(sender, hs)
        if entries:
            data = record.carried(sender, entries)
            self._log.add((self._ids.sid, data), watch, True)
            self._ids.size += len(data)
            self.counts["carried_ids"] += len(entries) // ENTRY

    def _rewrite_ids(self):
        """Once the ids file holds a segment's size and twice what its rewrite kept (or recovery
        found older ones): write the entries of those files still in their windows to a new
        one (:meth:`_read_ids`), and unlink the old ones once that is fsynced. A failure
        leaves them to the next pass (recovery reads every ids file)."""
        cur = self._ids
        if not self._old_ids and cur.size < max(self.segment_bytes, 2 * cur.kept):
            return
        old, self._old_ids = self._old_ids + [cur.sid], []
        self._ids = IdsFile(min(old) - 1)
        written, watch, pace = AsyncResult(), Watch(), Pace()
        self._log.add(waiter=written.set)  # what was handed to the old files is on disk
        try:
            if written.get() is not None:
                raise OSError("their last writes failed")
            found = self._read_ids(old, pace)
            while found:  # popped: each sender's entries freed as they go
                sender, parts = found.popitem()
                self._carry(sender, digests(b"".join(parts)), watch)
                pace.step()
        except OSError as exc:
            self._old_ids[:0] = old
            log.error("offd %s: ids files %s not rewritten, the next pass tries again: %s", self.dir, old, exc)
            return
        self._ids.kept = self._ids.size
        self.counts["ids_rewrites"] += 1
        self._log.add(waiter=lambda err: self._ids_written(old, err or watch.failed))

    def _ids_written(self, old, failed):
        if failed:
            self._old_ids[:0] = old
        else:
            self._pool.spawn(self._unlink, old)

    def _read_ids(self, sids, pace):
        """``{sender: [packed entries...]}`` of ids files no longer written to. Each file is read on a
        threadpool thread, then decoded here in slices: decoded on the thread, it held the GIL
        in 5 ms turns, and the hub waited one turn at every system call (a stall of 18-25 ms
        with 10,000 senders)."""
        found = {}

        def take(rec):
            if rec[0] == "H":
                found.setdefault(rec[1], []).append(rec[2])
            pace.step()
        for sid in sids:
            record.walk(gevent.get_hub().threadpool.apply(self._contents, (sid,)), take)
        return found

    def _contents(self, sid):
        try:
            with open(self._path(sid), "rb") as f:
                return f.read()
        except FileNotFoundError:  # no entry was ever carried to it
            return b""

    def _compact(self):
        """Rewrite the live records of every non-active segment forward, then unlink those segments."""
        old = [s for s in self.segments.values() if s is not self._active]
        if not old:
            return
        for seg in old:
            seg.closing = True
        sids = {s.sid for s in old}
        moved, watch = 0, Watch()
        if any(s.live for s in old):
            pace = Pace()
            for user, item in self._old_items(self._active.base, pace):
                if item.seg in sids and (user is None or self._live(user, item)):
                    self._move(user, item, watch)
                    moved += 1
                pace.step()
        self._carry_cursors(sids)
        if self.carry is not None:
            self._carry_ids(old, watch)
        for sid in sids:
            del self.segments[sid]
        self.counts["compactions"] += 1
        self.counts["compacted_items"] += moved
        self._log.add(waiter=lambda err: err is None and not watch.failed and self._pool.spawn(self._unlink,
                                                                                            sorted(sids)))
