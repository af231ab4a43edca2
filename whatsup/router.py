"""The router: every item goes through offd, and the recipient's session is poked.

Implements the delivery rules of docs/PROTOCOL.md ("Messages and ticks"):

* a ``msg`` is stamped and queued in the recipient's offd queue, and the
  recipient's session (if any) is poked at once; it sends from the queue, so
  live and spooled items share one order and one flow-control window, and an
  item leaves offd only when the device acks it;
* the sender hears ``sent`` (the ✓) only after the group-committed fsync;
* device acks become ``delivered`` receipts and ``read`` frames become
  ``read`` receipts, queued for the original sender the same way;
* a retransmitted client id is acked again but never queued twice (a bounded
  per-sender window of recent ids, rebuilt from the spool after a restart).

Replies travel as ``("reply", frame)`` messages to the asking session's
mailbox, because the ✓ comes later, from the commit, not from the call.
"""
import collections
import logging

from .offd import QueueFull, ShardDown
from .protocol import Code, error_frame
from .runtime import ProcessDead

log = logging.getLogger("whatsup.router")


class _Pending:
    """A message id seen from a sender: where it went, and who waits for its ✓."""
    __slots__ = ("to", "seq", "ts", "durable", "waiters")

    def __init__(self, to, seq, ts, durable):
        self.to, self.seq, self.ts, self.durable, self.waiters = to, seq, ts, durable, []


class Router:
    def __init__(self, table, sm, offd, accounts, dedup_window):
        self.table, self.sm, self.offd, self.accounts = table, sm, offd, accounts
        self.dedup_window = dedup_window
        self.dedup = {}  # sender -> OrderedDict(cid -> _Pending)
        self.counters = collections.Counter()

    def __repr__(self):
        return f"<Router senders={len(self.dedup)} {dict(self.counters)}>"

    def shard_up(self, spool, restarted):
        """An offd shard opened: at node start, refill the dedup window from what its recovery
        found; after a crash (the window outlived it), poke its online users, whose sessions
        resend what the new incarnation holds."""
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
        seen = self.dedup.get(sender, {}).get(cid)
        if seen is not None:
            self.counters["retransmits"] += 1
            if seen.durable:
                self._reply(pid, self._sent(ref, cid, seen.ts))
            else:
                seen.waiters.append((pid, ref))
            return
        if not self.accounts.exists(to):
            return self._reply(pid, error_frame(Code.UNKNOWN_USER, f"no such user {to!r}", ref))
        pending = _Pending(to, None, None, False)
        pending.waiters.append((pid, ref))
        frame = {"type": "msg", "from": sender, "id": cid, "body": body}
        try:
            item = self.offd.spool(to).put(to, "msg", frame, sender=sender, cid=cid,
                                           on_durable=lambda err: self._durable(sender, cid, pending, err))
        except ShardDown as exc:
            self.counters["shard_down"] += 1
            return self._reply(pid, error_frame(Code.STORE_FAILED, f"{exc}", ref))
        except QueueFull:
            self.counters["queue_full"] += 1
            log.warning("queue of %s is full: refused message %s from %s", to, cid, sender)
            return self._reply(pid, error_frame(Code.QUEUE_FULL, f"{to}'s queue is full", ref))
        pending.seq, pending.ts = item.seq, item.ts
        self._remember(sender, cid, pending)
        self.poke(to)

    def _durable(self, sender, cid, pending, err):
        if err is None:
            pending.durable = True
            frames = [(pid, self._sent(ref, cid, pending.ts)) for pid, ref in pending.waiters]
        else:
            self.dedup.get(sender, {}).pop(cid, None)
            frames = [(pid, error_frame(Code.STORE_FAILED, "the spool could not store the message; "
                                        "retry later", ref)) for pid, ref in pending.waiters]
        pending.waiters = []
        for pid, frame in frames:
            self._reply(pid, frame)

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

    def acked(self, user, items):
        """``user``'s device acked ``items``: tell each sender its messages were delivered."""
        by_sender = {}
        for item in items:
            if item.kind == "msg":
                by_sender.setdefault(item.sender, []).append(item.cid)
        for sender, ids in by_sender.items():
            try:
                self._receipt(user, sender, "delivered", ids)
            except ShardDown as exc:  # the items are gone from offd; only the ✓✓ is lost
                self.counters["receipts_lost"] += 1
                log.error("delivered receipt of %s for %s lost: %s", ids, sender, exc)

    def read(self, user, pid, ref, to, ids):
        """``user`` has read messages ``ids`` from ``to``; answer ``ok`` once the receipt is durable."""
        if not self.accounts.exists(to):
            return self._reply(pid, error_frame(Code.UNKNOWN_USER, f"no such user {to!r}", ref))

        def durable(err):
            self._reply(pid, {"type": "ok", "ref": ref} if err is None else
                        error_frame(Code.STORE_FAILED, "could not store the receipt; retry", ref))
        try:
            self._receipt(user, to, "read", ids, durable)
        except ShardDown as exc:
            self._reply(pid, error_frame(Code.STORE_FAILED, f"{exc}", ref))

    def _receipt(self, user, to, status, ids, on_durable=None):
        frame = {"type": "receipt", "from": user, "status": status, "ids": ids}
        self.offd.spool(to).put(to, "receipt", frame, on_durable=on_durable, force=True)
        self.counters["receipts"] += 1
        self.poke(to)

    # --- delivery ----------------------------------------------------------------------

    def poke(self, user):
        """Wake ``user``'s session, if online, to send what its queue holds."""
        pid = self.sm.lookup(user)
        if pid is not None:
            self.tell(pid, ("poke",))

    def _reply(self, pid, frame):
        self.tell(pid, ("reply", frame))

    def tell(self, pid, msg):
        """Send ``msg`` to ``pid`` if it still runs; a gone session needs nothing more."""
        try:
            self.table.send(pid, msg)
        except ProcessDead:
            pass  # the session is gone; a retransmission after reconnect gets its answer
