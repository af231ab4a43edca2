"""The router: every item goes through offd, and the recipient's session is poked.

Implements the delivery rules of docs/PROTOCOL.md ("Messages and ticks"):

* a ``msg`` is stamped and queued in the recipient's offd queue, and the
  recipient's session (if any) is poked at once, without waiting for the fsync
  (every shard calls ``poke``, its ``on_ready`` callback); it sends from the queue, so live and
  spooled items share one order and one flow-control window, and an item
  leaves offd only when the device acks it (and the ✓✓ receipts that ack
  causes are durable);
* the sender hears ``sent`` (the ✓) only after the group-committed fsync;
* device acks become ``delivered`` receipts and ``read`` frames become
  ``read`` receipts, queued for the original sender the same way;
* a retransmitted client id is acked again but never queued twice (a bounded
  per-sender window of recent ids, whatsup/routing/dedup.py, rebuilt from the spool
  after a restart; whatsup/social/groups.py shares it through
  ``retransmit``/``track``/``durable``);
* a user with several devices (docs/PROTOCOL.md, "Devices") gets every item on
  each (one queued copy, a cursor per device: whatsup/store/offd/queues.py); ✓✓
  comes at the first device's ack; what one of their devices sends (a ``msg``,
  a ``read``) is queued for the user too (``self`` items), so their other
  devices show the whole conversation;
* a group message's copies are queued by shard (``partition``, ``copies``: one
  G record per offd shard) once its intent is durable, and its fan-out is
  closed (``fanned_out``: ✓, then an E record); at node start a fan-out a crash
  cut short is completed before anything is served (``shard_up``);
* a message to a user who blocked the sender is answered ``sent`` and dropped
  (docs/PROTOCOL.md, "Blocking"); group copies (kind ``gmsg``) give receipts
  that carry ``group``.

Replies travel as ``("reply", frame)`` messages to the asking session's
mailbox, because the ✓ comes later, from the commit, not from the call.

The sessions call the router directly, in their own greenlets (the hot path;
see whatsup/runtime/service.py and docs/ARCHITECTURE.md for the figure). The
router's process (:class:`RouterProcess`) owns its code and its timed work: a
✓✓ receipt the spool refused waits in the router's heap and is retried by the
process, every runtime.retry_interval seconds, instead of a timer greenlet of its own.
"""
import collections
import functools
import itertools
import logging
import time

from ..observe import latency
from .dedup import Dedup, digest
from ..store.offd import QueueFull, ShardDown
from ..store.offd.spool import SLICE
from ..protocol import PRIMARY, Code, ProtocolError, Template, error_frame, unpack
from ..runtime import MailboxFull, ProcessDead, let_others_run
from ..runtime.service import Service
from ..runtime.timers import DeadlineHeap

log = logging.getLogger("whatsup.router")
RETRY_TICK = ("retry",)


def group_frame(gid, sender, cid, body):
    """The frame every copy of a group message carries (stamped with each shard's seq and ts)."""
    return Template({"type": "msg", "from": sender, "group": gid, "id": cid, "body": body})


class AllDurable:
    """Calls ``done(err)`` once every expected durability callback came (the first error wins).

    It starts holding one expectation for the issuer, released by :meth:`release`
    after the last put, so it cannot fire while a fan-out is still issuing.
    """
    __slots__ = ("n", "err", "done")

    def __init__(self, done):
        self.n, self.err, self.done = 1, None, done

    def expect(self):
        self.n += 1
        return self

    def __call__(self, err=None):
        if err is not None and self.err is None:
            self.err = err
        self.n -= 1
        if self.n == 0:
            self.done(self.err)

    release = __call__


class _Pending:
    """A message id whose ✓ waits for a write: where it goes (a user or a group), who waits,
    and the record that will hold it."""
    __slots__ = ("to", "ts", "waiters", "anchor")

    def __init__(self, to, ts):
        self.to, self.ts, self.waiters, self.anchor = to, ts, [], None  # anchor: (spool, Item)


class RouterProcess(Service):
    """The router's process (whatsup/runtime/service.py): retries ✓✓ receipts; a reload of this
    module swaps the router's code."""
    kind = "router"


class Router:
    def __init__(self, table, sm, offd, accounts, blocks, dedup_window, timers, offline=None, retry=1.0,
                 remote=None):
        self.table, self.sm, self.offd, self.accounts = table, sm, offd, accounts
        self.retry = retry  # seconds between attempts to store a ✓✓ receipt (runtime.retry_interval)
        self.offline = offline  # callable(user): an item was queued for a user with no session (push)
        # In a cluster (whatsup/cluster/homes.py): a request about a user homed on another node is
        # served there, and an item for them is queued there.
        self.remote = remote
        self.blocks = blocks
        self.timers = timers
        self.dedup = Dedup(dedup_window)  # the ids whose ✓ was sent (durable)
        self.pending = {}                 # (sender, cid) -> _Pending: ids whose ✓ waits for a write
        self.retries = DeadlineHeap()     # (when, n, receipt) of ✓✓ receipts to store again
        self.counters = collections.Counter()
        self.pid = None                   # the router's process, while it runs
        self._starting = []               # shards up at node start, until all of them are
        self._order = itertools.count()

    def __repr__(self):
        return (f"<Router senders={len(self.dedup)} pending={len(self.pending)} retries={len(self.retries)} "
                f"{dict(self.counters)}>")

    def started(self, proc):
        """The router's process (re)started: it retries the receipts still waiting."""
        self.pid = proc.pid
        if len(self.retries):
            self.timers.notify_at(self.retries.earliest(), self.pid, RETRY_TICK)

    def describe(self):
        return {"senders": len(self.dedup), "pending": len(self.pending), "retries": len(self.retries),
                **self.counters}

    def handle_info(self, msg):
        """In the router's process: store again the ✓✓ receipts whose retry is due."""
        if msg != RETRY_TICK:
            raise ValueError(f"router: unexpected message {msg!r}")
        for _, _, receipt in self.retries.pop_due(time.monotonic()):
            self._delivered(*receipt)
        if len(self.retries):
            self.timers.notify_at(self.retries.earliest(), self.pid, RETRY_TICK)

    def shard_up(self, spool, restarted):
        """An offd shard opened. Its items are served at once: the shard pokes a user's session
        as soon as an item for them is queued (``poke``, its ``on_ready``: delivery does not wait
        for the fsync), and its compaction carries the dedup entries anchored in the segments it
        drops (``dedup.pick``, its ``carry``).

        At node start, once every shard is up (:meth:`_recovered`), the dedup window is refilled
        from what recovery found and every group fan-out a crash cut short is completed. After
        a crash of this shard alone (the window outlived it), its online users are poked (their
        sessions resend what it holds) and a fan-out intent it holds that no fan-out in progress
        will finish is closed: its sender was answered ``store_failed`` and sends it again."""
        if not restarted:
            self._starting.append(spool)
            if len(self._starting) == len(self.offd.industry):
                spools, self._starting = self._starting, []
                self._recovered(spools)
            return
        spool.take_recovered()
        for key in spool.fanouts():
            if key not in self.pending:
                spool.finished(key)
        for sender, cid in list(spool.incomplete):
            if (sender, cid) not in self.pending:
                self._close(sender, cid, spool)
        for user in spool.users():
            self.poke(user)

    def _recovered(self, spools):
        """Every shard recovered at node start: settle the fan-outs (finished unless an F without
        E names them), refill the dedup window, complete what a crash cut short."""
        incomplete = {key: (spool, f) for spool in spools for key, f in spool.incomplete.items()}
        for spool in spools:
            for key in spool.fanouts():
                if key not in incomplete:
                    spool.finished(key)
        skip = {(sender, digest(f.group[0], cid)) for (sender, cid), (_, f) in incomplete.items()}
        found = {}  # sender -> [(spool, its entries)]
        for spool in spools:
            for sender, entries in spool.take_recovered().items():
                found.setdefault(sender, []).append((spool, entries))
        n = 0
        while found:  # popped, so each sender's entries are freed in its slice: freeing a million
            sender, parts = found.popitem()  # at once, when ``found`` went, held the hub for 120 ms
            entries = [(*e, spool) for spool, part in parts for e in part]
            entries.sort(key=lambda e: e[0])
            newest, seen = [], set()
            for e in reversed(entries):  # the window's last ``size`` distinct ids, oldest first
                if e[1] not in seen and (sender, e[1]) not in skip:
                    seen.add(e[1])
                    newest.append(e)
                    if len(newest) == self.dedup.size:
                        break
            for ts, h, sid, seq, spool in reversed(newest):
                self.dedup.add(sender, h, ts, seq)
                spool.anchor(sid, sender, h)
            n += len(entries)
            if n > SLICE:
                n = 0
                let_others_run()
        for (sender, cid), (home, f) in incomplete.items():
            self.counters["fanouts_completed"] += 1
            log.warning("completing the fan-out of group %s message %s from %s that a crash cut short",
                        f.group[0], cid, sender)
            pending = self.track(sender, cid, f.group[0], ts=f.ts)
            done = AllDurable(functools.partial(self.fanned_out, home, sender, cid, pending, f))
            gid, members = f.group
            have = {spool for spool in spools if spool.has_copy((sender, cid))}
            parts, lost = self.partition(members)
            self.copies(gid, sender, cid, group_frame(gid, sender, cid, f.frame), parts, lost, done, have)
            done.release()
            for user in members:
                self.poke(user)

    # --- messages -------------------------------------------------------------------

    def message(self, sender, pid, ref, cid, to, body, device=PRIMARY):
        """Route a msg from ``device`` of ``sender`` (its session is ``pid``); the answer goes to
        ``pid``. A sender with other devices gets a ``self`` copy (see :meth:`synced`)."""
        if self.remote is not None and not self.remote.here(to):
            return self.remote.forward(to, pid, ref, "message", sender, cid, to, body, device)
        self.counters["msg_in"] += 1
        mine = {"type": "msg", "from": sender, "to": to, "id": cid, "body": body}  # for their other devices
        if self.retransmit(sender, pid, ref, cid, to, again=lambda done: self.synced(sender, device, mine, done)):
            return
        if not self.accounts.exists(to):
            return self.reply(pid, error_frame(Code.UNKNOWN_USER, f"no such user {to!r}", ref))
        if self.blocks.blocks(sender, to):
            return self.reply(pid, error_frame(Code.BLOCKED, f"you blocked {to}; unblock to write", ref))
        if self.blocks.blocks(to, sender):
            # WhatsApp's single tick forever: acked as sent, never queued (docs/PROTOCOL.md, "Blocking").
            self.counters["blocked"] += 1
            ts = int(time.time() * 1000)
            self.dedup.add(sender, digest(to, cid), ts)
            return self.reply(pid, self._sent(ref, cid, ts))
        pending = self.track(sender, cid, to, waiter=(pid, ref))
        frame = {"type": "msg", "from": sender, "id": cid, "body": body}
        done = AllDurable(lambda err: self.durable(sender, cid, pending, err))
        try:
            spool = self.offd.spool(to)  # may wait for a restarting shard: retransmissions join ``pending``
            item = spool.put(to, "msg", frame, sender=sender, cid=cid, on_durable=done.expect())
        except ShardDown as exc:
            self.counters["shard_down"] += 1
            return self._refuse(sender, cid, pending, Code.STORE_FAILED, f"{exc}")
        except QueueFull:
            self.counters["queue_full"] += 1
            log.warning("queue of %s is full: refused message %s from %s", to, cid, sender)
            return self._refuse(sender, cid, pending, Code.QUEUE_FULL, f"{to}'s queue is full")
        pending.ts, pending.anchor = item.ts, (spool, item)
        self.synced(sender, device, mine, done)
        done.release()

    def synced(self, user, device, frame, done):
        """Queue ``frame`` (what ``device`` of ``user`` sent, marked with ``device``) for ``user``
        when they have other devices; forced (bounded by what they send). The device that
        sent it gets it too (one cursor for all, queues.py) and skips it by ``device``. A
        restarting shard of ``user`` (their home down, in a cluster) costs the copy, not the
        message: logged."""
        if len(self.accounts.devices(user)) < 2:
            return
        frame["device"] = device
        on_durable = done.expect()
        if self.remote is not None and not self.remote.here(user):
            def stored(err):
                if err is not None:
                    self._copy_lost(user, frame, err)
                on_durable(None)
            return self.remote.put(user, "self", frame, stored, True)
        try:
            self.offd.spool(user).put(user, "self", frame, on_durable=on_durable, force=True)
        except ShardDown as exc:
            on_durable(None)  # the copy is given up, the message is not
            self._copy_lost(user, frame, exc)

    def _copy_lost(self, user, frame, exc):
        self.counters["self_copies_lost"] += 1
        log.warning("%s's own copy of %s not queued for their other devices: %s", user, frame["type"], exc)

    def retransmit(self, sender, pid, ref, cid, to, again=None):
        """True when ``cid`` was seen from ``sender`` (to ``to``, a user or a group): its ✓ is
        (or will be) sent again, nothing more, but for ``again(done)`` (an AllDurable), which
        queues again what the first ✓ also waited for, in another shard than the message: a
        kill -9 between the two fsyncs keeps the message (recovery puts it back in the window)
        and loses that, and the sender, never ✓'d, retransmits. The ✓ then waits for it too
        (the sender's self copy: their other devices skip a second one by its id)."""
        seen = self.pending.get((sender, cid))
        if seen is not None:
            seen.waiters.append((pid, ref))
        else:
            found = self.dedup.find(sender, digest(to, cid))
            if found is None:
                return False
            sent = self._sent(ref, cid, found[0])
            if again is None:
                self.reply(pid, sent)
            else:
                done = AllDurable(self.ok_when_durable(pid, sent))
                again(done)
                done.release()
        self.counters["retransmits"] += 1
        return True

    def track(self, sender, cid, to, waiter=None, ts=None):
        """A new message id from ``sender`` to ``to`` (a user or a group) whose ✓ waits for a
        write; returns its _Pending."""
        pending = self.pending[(sender, cid)] = _Pending(to, ts)
        if waiter is not None:
            pending.waiters.append(waiter)
        return pending

    def durable(self, sender, cid, pending, err):
        """The message is stored (err None) or failed: answer everyone waiting for its ✓. A stored
        id enters the dedup window, anchored in the segment of the record that holds it."""
        if err is not None:
            return self._refuse(sender, cid, pending, Code.STORE_FAILED,
                                "the spool could not store the message; retry later")
        if self.pending.get((sender, cid)) is pending:
            del self.pending[(sender, cid)]
        latency.SENT.observe(max(0.0, time.time() - pending.ts / 1000.0))
        spool, item = pending.anchor or (None, None)
        seq = item.seq if item is not None and item.kind == "msg" else 0  # a group copy's seq is its shard's
        h = digest(pending.to, cid)
        self.dedup.add(sender, h, pending.ts, seq)
        if item is not None and item.seg is not None:
            spool.anchor(item.seg, sender, h)
        waiters, pending.waiters = pending.waiters, []
        for pid, ref in waiters:
            self.reply(pid, self._sent(ref, cid, pending.ts))

    def _refuse(self, sender, cid, pending, code, text):
        """``pending`` will not be stored: every waiter hears ``code`` (the first sender and each
        retransmission that joined it meanwhile, from any session: each has a request in
        flight), and the id is forgotten, so the next retransmission tries again."""
        if self.pending.get((sender, cid)) is pending:
            del self.pending[(sender, cid)]
        waiters, pending.waiters = pending.waiters, []
        for pid, ref in waiters:
            self.reply(pid, error_frame(code, text, ref))

    # --- groups: a durable fan-out -----------------------------------------------------

    def partition(self, users):
        """``({spool: [user...]}, [(user, exc)...])``: ``users`` by offd shard, and those whose
        shard is down. Only the first such shard is waited for (runtime.restart_wait): a
        crash-looping shard must cost a fan-out one wait, not one per member."""
        parts, lost, waited = {}, [], False
        for n, user in enumerate(users, 1):
            try:
                if self.remote is not None and not self.remote.here(user):  # one part per home node
                    parts.setdefault(self.remote.spool_of(user), []).append(user)
                    continue
                spool = self.offd.current(user) if waited else self.offd.spool(user)
                if spool is None:
                    raise ShardDown(f"the offd shard of {user} is restarting")
            except ShardDown as exc:
                waited = True
                lost.append((user, exc))
            else:
                parts.setdefault(spool, []).append(user)
            if not n % SLICE:
                let_others_run()
        return parts, lost

    def copies(self, gid, sender, cid, template, parts, lost, done, have=()):
        """Queue a group message's copies: one G record on each spool of ``parts`` (but those in
        ``have``, which hold theirs), each durability expected by ``done`` (an AllDurable). A
        member whose shard is down fails the fan-out (the sender hears store_failed). A sender
        with other devices gets a copy too (their devices show the whole group)."""
        multi = len(self.accounts.devices(sender)) > 1
        for spool, users in parts.items():
            users = [u for u in users if u != sender or multi]
            if users and spool not in have:
                spool.put_group(users, gid, sender, cid, template, done.expect())
        for user, exc in lost[:1]:
            done.expect()(exc)
            log.error("group %s message %s not stored for %s: %s", gid, cid, user, exc)

    def fanned_out(self, home, sender, cid, pending, intent, err):
        """Every G record of a fan-out is written (or one failed): ✓ (or store_failed) to the
        sender, and the fan-out is closed. A failed fan-out is closed as well: its sender
        sends it again."""
        pending.anchor = (home, intent)
        self._close(sender, cid, self.offd.current(intent.group[0]))
        self.durable(sender, cid, pending, err)

    def _close(self, sender, cid, home):
        """Write the E record of fan-out (sender, cid) on ``home`` (the current incarnation of
        its home shard; None while it restarts: the next start completes the fan-out), after
        which every shard may drop the fan-out's F and G records."""
        def closed(err):
            if err is None:
                for spool in self.offd.spools:
                    if spool is not None:
                        spool.finished((sender, cid))
        if home is not None:
            home.done(sender, cid, closed)

    @staticmethod
    def _sent(ref, cid, ts):
        return {"type": "sent", "ref": ref, "id": cid, "ts": ts}

    # --- receipts ---------------------------------------------------------------------

    def acked(self, user, device, spool, upto):
        """``device`` of ``user`` has every item up to seq ``upto`` of ``spool``: tell each sender
        ✓✓ of what reached a device of ``user`` for the first time (✓✓ is the first device's ack).

        Group copies (kind ``gmsg``) give one receipt per (sender, group), carrying ``group``.
        offd forgets the acked items only once those receipts are durable (a
        receipt that cannot be stored, or whose shard is restarting, is retried
        every runtime.retry_interval seconds), so no crash or disk fault between the two can
        lose a ✓✓. If ``user``'s own shard dies meanwhile, its new incarnation
        recovers the items (no delete record was written) and delivers them
        again with the same seqs: the device skips them and acks again.
        """
        acked = spool.ack(user, device, upto)
        by_sender = {}
        now = time.time()
        for item in acked.items:
            latency.DELIVERY.observe(max(0.0, now - item.ts / 1000.0))
            if item.kind == "msg":
                by_sender.setdefault((item.sender, None), []).append(item.cid)
            elif item.kind == "gmsg" and item.sender != user:  # not the copy of their own
                group = item.group[0] if item.group else unpack(item.frame)["group"]  # older P records
                by_sender.setdefault((item.sender, group), []).append(item.cid)
        if not by_sender:
            spool.release(acked)
            return
        left = [len(by_sender)]

        def stored():
            left[0] -= 1
            if not left[0]:
                spool.release(acked)
        for (sender, group), ids in by_sender.items():
            self._delivered(user, sender, ids, group, stored)

    def _delivered(self, user, sender, ids, group, stored):
        """Store one ✓✓ receipt; a full disk or a restarting shard only delays it (the router's
        process tries again in runtime.retry_interval seconds: :meth:`handle_info`)."""
        def retry(why):
            self.counters["receipt_retries"] += 1
            log.warning("delivered receipt of %s for %s not stored (%s): retrying in %ss", ids, sender, why,
                        self.retry)
            when = time.monotonic() + self.retry
            self.retries.push((when, next(self._order), (user, sender, ids, group, stored)))
            if self.pid is not None:
                self.timers.notify_at(when, self.pid, RETRY_TICK)

        def durable(err):
            if err is None:
                stored()
            else:
                retry(err)
        try:
            self._receipt(user, sender, "delivered", ids, durable, group, lazy=True)
        except ShardDown as exc:
            retry(exc)

    def read(self, user, pid, ref, to, ids, group=None, device=PRIMARY):
        """``device`` of ``user`` has read messages ``ids`` from ``to`` (in ``group``, if given);
        answer ``ok`` once the receipt is durable, or ``queue_full`` when ``to`` has
        offd.max_queue items waiting. The user's other devices hear it (a ``self`` receipt).
        In a cluster the home of ``user`` answers (it holds their queue and the ids sent to
        them), or for a group the group's home (it holds the ids sent to the group)."""
        owner = user if group is None else group
        if self.remote is not None and not self.remote.here(owner):
            return self.remote.forward(owner, pid, ref, "read", user, to, ids, group, device)
        if not self.accounts.exists(to):
            return self.reply(pid, error_frame(Code.UNKNOWN_USER, f"no such user {to!r}", ref))
        undelivered = self.undelivered(user, to, ids, group)
        if undelivered:
            self.counters["read_refused"] += 1
            return self.reply(pid, error_frame(Code.NOT_DELIVERED, f"{len(undelivered)} of the ids were not "
                                               f"delivered to you by {to}", ref))
        try:  # unlike ✓✓, read receipts are not bounded by messages sent, so they obey max_queue
            done = AllDurable(self.ok_when_durable(pid, {"type": "ok", "ref": ref}))
            self._receipt(user, to, "read", ids, done.expect(), group, force=False)
        except ShardDown as exc:
            self.reply(pid, error_frame(Code.STORE_FAILED, f"{exc}", ref))
        except QueueFull:
            self.counters["queue_full"] += 1
            self.reply(pid, error_frame(Code.QUEUE_FULL, f"{to}'s queue is full", ref))
        else:
            frame = {"type": "receipt", "from": user, "status": "read", "ids": ids, "to": to}
            if group is not None:
                frame["group"] = group
            self.synced(user, device, frame, done)
            done.release()

    def history(self, user, device, pid, ref, to_device, bundle):
        """A history bundle from ``device`` of ``user`` for their device ``to_device``
        (docs/PROTOCOL.md, "Devices"): queued for that device alone (a ``direct`` item, whose
        cid names it), never parsed; ``ok`` once durable. In a cluster ``user``'s home queues it."""
        if self.remote is not None and not self.remote.here(user):
            return self.remote.forward(user, pid, ref, "history", user, device, to_device, bundle)
        if to_device == device or to_device not in self.accounts.devices(user):
            return self.reply(pid, error_frame(Code.UNKNOWN_DEVICE, f"no other linked device {to_device}", ref))
        frame = {"type": "history", "from": user, "device": device, "bundle": bundle}
        try:
            self.offd.spool(user).put(user, "direct", frame, sender=user, cid=to_device,
                                      on_durable=self.ok_when_durable(pid, {"type": "ok", "ref": ref}))
        except ShardDown as exc:
            self.reply(pid, error_frame(Code.STORE_FAILED, f"{exc}", ref))
        except QueueFull:
            self.counters["queue_full"] += 1
            self.reply(pid, error_frame(Code.QUEUE_FULL, f"{user}'s queue is full", ref))

    def undelivered(self, reader, sender, ids, group=None):
        """The ids among ``ids`` that ``reader`` may not call read: a read names only messages
        ``sender`` sent among its last session.dedup_window ids (the window's digests cover
        the destination), either to ``reader``, one of whose devices acked them (Store.delivered;
        a restarting shard verifies nothing), or to ``group`` (a group copy's own seq is not kept: only
        where it went is checked). Otherwise anyone could tell a sender "read by" about
        messages they never got (issue 11)."""
        spool = self.offd.current(reader)
        dest = reader if group is None else group

        def delivered(cid):
            sent = self._entry(sender, dest, cid)
            if sent is None:
                return False
            seq = sent[1]
            return group is not None or (seq is not None and spool is not None and spool.delivered(reader, seq))
        return [i for i in ids if not delivered(i)]

    def _entry(self, sender, dest, cid):
        """``(ts, seq)`` of message ``cid`` from ``sender`` to ``dest`` (seq in its recipient's
        queue; 0: a group copy's or never queued, None: not stored yet), or None when ``sender``
        sent no such id to ``dest`` among its last session.dedup_window ids."""
        p = self.pending.get((sender, cid))
        if p is not None and p.to == dest:
            return p.ts, p.anchor[1].seq if p.anchor is not None else None
        return self.dedup.find(sender, digest(dest, cid))

    def info(self, user, pid, f):
        """Message info: which devices of ``to`` have message ``id`` from ``user`` (✓✓ is the
        first of them; docs/PROTOCOL.md, "Devices, message info"). Answered from what the server
        holds anyway (the sender's dedup window, the recipient's cursors): nothing is stored per
        device or per message for it. Devices linked after the message are not listed; a message
        never queued (the recipient blocks the sender) reads as reaching none."""
        to, cid, ref = f["to"], f["id"], f["ref"]
        if not self.accounts.exists(to):
            raise ProtocolError(Code.UNKNOWN_USER, f"no such user {to!r}", ref)
        sent = self._entry(user, to, cid)
        if sent is None:
            raise ProtocolError(Code.UNKNOWN_MESSAGE, f"no stored message {cid!r} from you to {to} among your "
                                f"last session.dedup_window", ref)
        spool = self.offd.current(to)
        if spool is None:
            raise ProtocolError(Code.STORE_FAILED, f"the offd shard of {to} is restarting; retry", ref)
        ts, seq = sent
        linked_at = {d["device"]: d.get("created", 0) * 1000 for d in self.accounts.device_list(to)}
        return {"type": "info", "ref": ref, "to": to, "id": cid,
                "devices": [{"device": d, "delivered": bool(seq) and spool.acked_by(to, d, seq)}
                            for d in self.accounts.devices(to) if linked_at.get(d, 0) <= ts]}

    def _receipt(self, user, to, status, ids, on_durable=None, group=None, force=True, lazy=False):
        frame = {"type": "receipt", "from": user, "status": status, "ids": ids}
        if group is not None:
            frame["group"] = group
        if self.remote is not None and not self.remote.here(to):
            self.remote.put(to, "receipt", frame, on_durable or (lambda err: None), force)
        else:
            self.offd.spool(to).put(to, "receipt", frame, on_durable=on_durable, force=force, lazy=lazy)
        self.counters["receipts"] += 1

    # --- delivery ----------------------------------------------------------------------

    def poke(self, user):
        """Wake ``user``'s sessions, one per device online, to send what its queue holds
        (coalesced: at most one poke waits in a session's mailbox, however many items arrive
        meanwhile)."""
        pids = self.sm.pids(user)
        for pid in pids:
            try:
                self.table.notify(pid, ("poke",))
            except ProcessDead:
                pass
        if not pids and self.offline is not None:
            self.offline(user)

    def ok_when_durable(self, pid, ok):
        """A durability callback answering ``ok`` to ``pid``, or ``store_failed`` on error."""
        def answer(err):
            self.reply(pid, ok if err is None else error_frame(
                Code.STORE_FAILED, "the server could not store that; retry", ok["ref"]))
        return answer

    def reply(self, pid, frame):
        """Queue ``frame`` for the session ``pid`` to send (if it still runs)."""
        self.tell(pid, ("reply", frame))

    def tell(self, pid, msg):
        """Send ``msg`` to ``pid`` if it still runs; a gone session needs nothing more."""
        try:
            self.table.send(pid, msg)
        except ProcessDead:
            pass  # the session is gone; a retransmission after reconnect gets its answer
        except MailboxFull:
            # A session's own requests are bounded (session.max_inflight) and wake-ups are
            # coalesced, so a full mailbox means it is stuck: close it. Its items are in offd;
            # its device retransmits what got no answer, and dedup answers it again.
            self.counters[Code.OVERLOADED] += 1
            log.warning("session %r: mailbox full, closing it (%s)", pid, Code.OVERLOADED)
            self.table.kill(pid, ("closed", Code.OVERLOADED))
