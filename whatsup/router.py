"""The router: every item goes through offd, and the recipient's session is poked.

Implements the delivery rules of docs/PROTOCOL.md ("Messages and ticks"):

* a ``msg`` is stamped and queued in the recipient's offd queue, and the
  recipient's session (if any) is poked at once, without waiting for the fsync
  (every shard calls ``poke`` through ``Spool.on_ready``); it sends from the queue, so live and
  spooled items share one order and one flow-control window, and an item
  leaves offd only when the device acks it (and the ✓✓ receipts that ack
  causes are durable);
* the sender hears ``sent`` (the ✓) only after the group-committed fsync;
* device acks become ``delivered`` receipts and ``read`` frames become
  ``read`` receipts, queued for the original sender the same way;
* a retransmitted client id is acked again but never queued twice (a bounded
  per-sender window of recent ids, rebuilt from the spool after a restart;
  whatsup/groups.py shares it through ``retransmit``/``track``/``durable``);
* a message to a user who blocked the sender is answered ``sent`` and dropped
  (docs/PROTOCOL.md, "Blocking"); group copies (kind ``gmsg``) give receipts
  that carry ``group``.

Replies travel as ``("reply", frame)`` messages to the asking session's
mailbox, because the ✓ comes later, from the commit, not from the call.
"""
import collections
import logging
import time

import gevent

from .offd import QueueFull, ShardDown
from .protocol import Code, error_frame, unpack
from .runtime import MailboxFull, ProcessDead

log = logging.getLogger("whatsup.router")
RETRY = 1.0  # seconds between attempts to store a ✓✓ receipt the spool refused


class _Pending:
    """A message id seen from a sender: where it went, and who waits for its ✓."""
    __slots__ = ("to", "seq", "ts", "durable", "waiters")

    def __init__(self, to, seq, ts, durable):
        self.to, self.seq, self.ts, self.durable, self.waiters = to, seq, ts, durable, []


class Router:
    def __init__(self, table, sm, offd, accounts, blocks, dedup_window, offline=None):
        self.table, self.sm, self.offd, self.accounts = table, sm, offd, accounts
        self.offline = offline  # callable(user): an item was queued for a user with no session (push)
        self.blocks = blocks
        self.dedup_window = dedup_window
        self.dedup = {}  # sender -> OrderedDict(cid -> _Pending)
        self.counters = collections.Counter()

    def __repr__(self):
        return f"<Router senders={len(self.dedup)} {dict(self.counters)}>"

    def shard_up(self, spool, restarted):
        """An offd shard opened: at node start, refill the dedup window from what its recovery
        found; after a crash (the window outlived it), poke its online users, whose sessions
        resend what the new incarnation holds. Either way the shard pokes a user's session
        as soon as an item for them is queued (delivery does not wait for the fsync), and its
        compaction carries the dedup window's ids forward (see :meth:`remembered`)."""
        spool.on_ready = self.poke
        spool.carry = self.remembered
        if not restarted:
            for sender, cid, to, seq, ts in spool.recovered:
                self._remember(sender, cid, _Pending(to, seq, ts, True))
        else:
            for user in list(spool.queues):
                self.poke(user)
        spool.recovered = []

    # --- messages -------------------------------------------------------------------

    def message(self, sender, pid, ref, cid, to, body):
        """Route a msg from ``sender`` (its session is ``pid``); the answer goes to ``pid``."""
        self.counters["msg_in"] += 1
        if self.retransmit(sender, pid, ref, cid):
            return
        if not self.accounts.exists(to):
            return self.reply(pid, error_frame(Code.UNKNOWN_USER, f"no such user {to!r}", ref))
        if self.blocks.blocks(sender, to):
            return self.reply(pid, error_frame(Code.BLOCKED, f"you blocked {to}; unblock to write", ref))
        if self.blocks.blocks(to, sender):
            # WhatsApp's single tick forever: acked as sent, never queued (docs/PROTOCOL.md, "Blocking").
            self.counters["blocked"] += 1
            pending = self.track(sender, cid, to, durable=True, ts=int(time.time() * 1000))
            return self.reply(pid, self._sent(ref, cid, pending.ts))
        pending = self.track(sender, cid, to, waiter=(pid, ref))
        frame = {"type": "msg", "from": sender, "id": cid, "body": body}
        try:
            item = self.offd.spool(to).put(to, "msg", frame, sender=sender, cid=cid,
                                           on_durable=lambda err: self.durable(sender, cid, pending, err))
        except ShardDown as exc:
            self.dedup[sender].pop(cid, None)
            self.counters["shard_down"] += 1
            return self.reply(pid, error_frame(Code.STORE_FAILED, f"{exc}", ref))
        except QueueFull:
            self.dedup[sender].pop(cid, None)
            self.counters["queue_full"] += 1
            log.warning("queue of %s is full: refused message %s from %s", to, cid, sender)
            return self.reply(pid, error_frame(Code.QUEUE_FULL, f"{to}'s queue is full", ref))
        pending.seq, pending.ts = item.seq, item.ts

    def retransmit(self, sender, pid, ref, cid):
        """True when ``cid`` was seen from ``sender``: its ✓ is (or will be) sent again, nothing more."""
        seen = self.dedup.get(sender, {}).get(cid)
        if seen is None:
            return False
        self.counters["retransmits"] += 1
        if seen.durable:
            self.reply(pid, self._sent(ref, cid, seen.ts))
        else:
            seen.waiters.append((pid, ref))
        return True

    def track(self, sender, cid, to, waiter=None, durable=False, ts=None):
        """Remember a new message id in ``sender``'s dedup window; returns its _Pending."""
        pending = _Pending(to, None, ts, durable)
        if waiter is not None:
            pending.waiters.append(waiter)
        self._remember(sender, cid, pending)
        return pending

    def durable(self, sender, cid, pending, err):
        """The message is stored (err None) or failed: answer everyone waiting for its ✓."""
        if err is None:
            pending.durable = True
            frames = [(pid, self._sent(ref, cid, pending.ts)) for pid, ref in pending.waiters]
        else:
            self.dedup.get(sender, {}).pop(cid, None)
            frames = [(pid, error_frame(Code.STORE_FAILED, "the spool could not store the message; "
                                        "retry later", ref)) for pid, ref in pending.waiters]
        pending.waiters = []
        for pid, frame in frames:
            self.reply(pid, frame)

    def remembered(self, spool, upto):
        """The durable ids of the dedup window queued on ``spool`` with seq <= ``upto``.

        Compaction drops the P records of acked messages, and a restart
        rebuilds the window from the records it finds: without this, a device
        retransmitting a message whose ✓ it missed would, after compaction and
        a restart, have it delivered a second time (tests/test_dedup.py).
        Carrying exactly the window keeps the spool's share of it as bounded
        as the window itself. (Group messages, whose ids map to several
        copies, are not carried.)
        """
        for sender, window in self.dedup.items():
            for cid, p in window.items():
                if p.durable and p.seq is not None and p.seq <= upto and self.offd.current(p.to) is spool:
                    yield sender, cid, p.to, p.seq, p.ts

    @staticmethod
    def _sent(ref, cid, ts):
        return {"type": "sent", "ref": ref, "id": cid, "ts": ts}

    def _remember(self, sender, cid, pending):
        window = self.dedup.get(sender)
        if window is None:
            window = self.dedup[sender] = collections.OrderedDict()
        window[cid] = pending
        if len(window) > self.dedup_window:
            window.popitem(last=False)

    # --- receipts ---------------------------------------------------------------------

    def acked(self, user, spool, upto):
        """``user``'s device has every item up to seq ``upto`` of ``spool``: tell each sender ✓✓.

        Group copies (kind ``gmsg``) give one receipt per (sender, group), carrying ``group``.
        offd forgets the acked items only once those receipts are durable (a
        receipt that cannot be stored, or whose shard is restarting, is retried
        every RETRY seconds), so no crash or disk fault between the two can
        lose a ✓✓. If ``user``'s own shard dies meanwhile, its new incarnation
        recovers the items (no delete record was written) and delivers them
        again with the same seqs: the device skips them and acks again.
        """
        acked = spool.ack(user, upto)
        by_sender = {}
        for item in acked.items:
            if item.kind == "msg":
                by_sender.setdefault((item.sender, None), []).append(item.cid)
            elif item.kind == "gmsg":
                group = unpack(item.frame)["group"]
                by_sender.setdefault((item.sender, group), []).append(item.cid)
        if not by_sender:
            if acked.items:
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
        """Store one ✓✓ receipt; a full disk or a restarting shard only delays it."""
        def retry(why):
            self.counters["receipt_retries"] += 1
            log.warning("delivered receipt of %s for %s not stored (%s): retrying in %ss", ids, sender, why, RETRY)
            gevent.spawn_later(RETRY, self._delivered, user, sender, ids, group, stored)

        def durable(err):
            if err is None:
                stored()
            else:
                retry(err)
        try:
            self._receipt(user, sender, "delivered", ids, durable, group)
        except ShardDown as exc:
            retry(exc)

    def read(self, user, pid, ref, to, ids, group=None):
        """``user`` has read messages ``ids`` from ``to`` (in ``group``, if given); answer ``ok``
        once the receipt is durable, or ``queue_full`` when ``to`` has offd.max_queue items waiting."""
        if not self.accounts.exists(to):
            return self.reply(pid, error_frame(Code.UNKNOWN_USER, f"no such user {to!r}", ref))
        undelivered = self.undelivered(user, to, ids, group)
        if undelivered:
            self.counters["read_refused"] += 1
            return self.reply(pid, error_frame(Code.NOT_DELIVERED, f"{len(undelivered)} of the ids were not "
                                               f"delivered to you by {to}", ref))
        try:  # unlike ✓✓, read receipts are not bounded by messages sent, so they obey max_queue
            self._receipt(user, to, "read", ids, self.ok_when_durable(pid, {"type": "ok", "ref": ref}),
                          group, force=False)
        except ShardDown as exc:
            self.reply(pid, error_frame(Code.STORE_FAILED, f"{exc}", ref))
        except QueueFull:
            self.counters["queue_full"] += 1
            self.reply(pid, error_frame(Code.QUEUE_FULL, f"{to}'s queue is full", ref))

    def undelivered(self, reader, sender, ids, group=None):
        """The ids among ``ids`` that ``reader`` may not call read: a read names only messages
        ``sender`` sent among its last session.dedup_window ids, either to ``reader``, whose
        device acked them (an item leaves the queue only when acked, so a seq below the
        queue's first is delivered; a restarting shard verifies nothing), or to ``group``
        (a group copy's own seq is not kept: only where it went is checked). Otherwise anyone
        could tell a sender "read by" about messages they never got (issue 11)."""
        window = self.dedup.get(sender, {})
        spool = self.offd.current(reader)
        q = spool.queues.get(reader) if spool is not None else None
        first = q.items[0].seq if q is not None and len(q.items) else None

        def delivered(p):
            return (p.to == reader and p.seq is not None and spool is not None
                    and (first is None or p.seq < first))
        return [i for i in ids if (p := window.get(i)) is None
                or not (delivered(p) or (group is not None and p.to == group))]

    def _receipt(self, user, to, status, ids, on_durable=None, group=None, force=True):
        frame = {"type": "receipt", "from": user, "status": status, "ids": ids}
        if group is not None:
            frame["group"] = group
        self.offd.spool(to).put(to, "receipt", frame, on_durable=on_durable, force=force)
        self.counters["receipts"] += 1

    # --- delivery ----------------------------------------------------------------------

    def poke(self, user):
        """Wake ``user``'s session, if online, to send what its queue holds (coalesced: at most
        one poke waits in a session's mailbox, however many items arrive meanwhile)."""
        pid = self.sm.lookup(user)
        if pid is not None:
            try:
                self.table.notify(pid, ("poke",))
            except ProcessDead:
                pass
        elif self.offline is not None:
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
