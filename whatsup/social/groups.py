"""Groups: durable membership and the server-side fan-out (docs/PROTOCOL.md, "Groups").

A group message is sent once and made durable once: its intent (body and the
members it goes to, an F record on the group's home offd shard) is fsynced
before any copy is queued; then each offd shard holding members gets one G
record, one seq and one frame that every member's queue there references (a
queued copy costs a deque slot), so offline members are served exactly like
1:1 recipients and order per (group, sender) comes from the per-recipient
queues. The sender's ✓ comes when every G record is fsynced; recovery completes
any fan-out a crash cut short from its intent (whatsup/routing/router.py). Each
member's ack becomes a ``delivered`` receipt carrying ``group``.

Group events (created, added, removed, left, admin, renamed) are system items
(``group_event``) queued for every member through offd the same way.

Every operation on one group goes through that group's queue of operations,
run in arrival order by the group's process, so messages and events enter every
member's queue in one order: a member removed before a message does not get it,
one added after it does not get it. Messages waiting next to each other in that
queue (a sender pipelining, or several members writing at once) are fanned out
together: each member's session is then woken once for the whole batch, sends it in one write, acks it in one ack, and the sender gets one
✓✓ receipt per member for all of it — the per-copy wake-ups, sends, acks and
receipts were most of a fan-out's cost (ops.bench fanout). A fan-out yields to
the hub every ``fanout_chunk`` members it wakes, so a 1024-member group does not
stall the other sessions.

Groups are an industry of processes keyed by group id: a group with operations
to run has a :class:`GroupProcess` (kind ``group``, its id as entity, a
temporary child of the ``groups`` supervisor, in ``ps()``), started by the
first operation and stopped once the group was quiet for ``groups.process_idle``
seconds. A session waits for its group changes (at most ``groups.op_timeout``; a process that dies
answers every change it held, so none waits forever); its messages are queued
without waiting, so killing a session cannot cut a fan-out in half. The
:class:`Groups` object (membership and the queues) belongs to the
:class:`GroupsProcess` and is called directly by the sessions
(whatsup/runtime/service.py).

Membership lives in RAM and in a :class:`whatsup.store.tables.Table` (``load``/``put``;
today social.sqlite), so it can move into the account shards without this
module changing.
"""
import collections
import functools
import logging
import time
import uuid

import gevent
from gevent.event import AsyncResult, Event

from ..store.offd import ShardDown
from ..protocol import Code, ProtocolError
from ..runtime import Process, ProcessDead, let_others_run
from ..runtime.ratelimit import Pacer
from ..runtime.service import Service
from ..runtime.supervisor import adopt
from ..routing.router import AllDurable, group_frame

log = logging.getLogger("whatsup.groups")


#: group messages fanned out together at most: the senders of a batch wait for all of it
BATCH = 64
SUPERVISOR = "groups"  # the supervisor that adopts the group processes
WORK, TICK = ("work",), ("tick",)


class GroupsProcess(Service):
    """The process owning the groups' membership (whatsup/runtime/service.py): a reload of this
    module swaps the code of :class:`Groups` too."""
    kind = "groups"


class GroupProcess:
    """One active group's process (gen_server callbacks): it runs the group's queue of
    operations in order, and stops when the group was quiet for ``Groups.idle`` seconds."""
    kind = "group"
    vsn = 1

    @staticmethod
    def init(proc, groups, group):
        return _Worker(groups, group)

    @staticmethod
    def describe(w):
        return {"group": w.group.gid, "members": len(w.group.members), "queued_ops": len(w.group.ops),
                "idle": round(time.monotonic() - w.last, 3)}

    @staticmethod
    def handle_info(proc, msg, w):
        if msg == WORK:
            w.groups._work(w)
            w.last = time.monotonic()
            if not w.armed:  # one deadline entry at a time, however busy the group
                GroupProcess._arm(proc, w)
        elif msg == TICK:
            w.armed = False
            if w.group.ops or time.monotonic() - w.last < w.groups.idle:
                GroupProcess._arm(proc, w)  # it worked meanwhile: idle from its last work on
            else:
                proc.stop("normal")  # idle: the next operation starts a new process
        else:
            raise ValueError(f"group: unexpected message {msg!r}")
        return w

    @staticmethod
    def terminate(proc, reason, w):
        w.groups._orphaned(proc.pid, w)

    @staticmethod
    def _arm(proc, w):
        w.armed = True
        w.groups.timers.notify_at(w.last + w.groups.idle, proc.pid, TICK)


class _Worker:
    """A group process's state: the group, and the operations in hand (answered if it dies)."""
    __slots__ = ("groups", "group", "current", "last", "armed")

    def __init__(self, groups, group):
        self.groups, self.group = groups, group
        self.current = ()
        self.last = time.monotonic()
        self.armed = False  # a TICK is due in node.timers


class Group:
    __slots__ = ("gid", "name", "members", "ops", "worker")

    def __init__(self, gid, name, members):
        self.gid, self.name = gid, name
        self.members = members  # user -> is admin, in the order they joined
        self.ops = collections.deque()  # (op, ref, AsyncResult) in arrival order; op is callable or a _Message
        self.worker = None              # the pid of the group's process, while it has one

    def __repr__(self):
        return f"<Group {self.gid} {self.name!r} members={len(self.members)} queued_ops={len(self.ops)}>"

    def admins(self):
        return [u for u, admin in self.members.items() if admin]

    def record(self):
        return {"name": self.name, "members": [[u, a] for u, a in self.members.items()]}


class _Message:
    """A group message waiting in its group's queue of operations; ``cost`` is the copies it
    spends of its sender's fan-out budget until it is answered."""
    __slots__ = ("sender", "pid", "ref", "cid", "body", "pending", "intent", "cost")

    def __init__(self, sender, pid, f, cost):
        self.sender, self.pid, self.ref, self.cid, self.body = sender, pid, f["ref"], f["id"], f["body"]
        self.pending = self.intent = None
        self.cost = cost


def _is_message(op):
    """A queued operation is a _Message or a change (a callable). Not isinstance: a hot reload
    makes a new _Message class while messages made by the old one wait in the queues."""
    return not callable(op)


class Groups:
    def __init__(self, processes, timers, router, offd, accounts, max_members, fanout_chunk,
                 sender_budget=1 << 16, pace=None, idle=10.0, op_timeout=60.0):
        self.processes, self.timers = processes, timers  # the ProcessTable the group processes run in
        # seconds a group's process waits for more work before it stops (groups.process_idle: a
        # group that talks keeps one process, a quiet one costs none), and a session for a change
        # behind the group's earlier operations (groups.op_timeout)
        self.idle, self.op_timeout = idle, op_timeout
        self.router, self.offd, self.accounts = router, offd, accounts
        self.max_members, self.chunk, self.budget = max_members, fanout_chunk, sender_budget
        self.pace = pace or Pacer(0, 0)  # copies per second per sender (ratelimit.Pacer)
        self.spending = {}  # sender -> group copies of its messages not answered yet
        self.placed = lambda gid: True  # in a cluster (whatsup/cluster/homes.py): gid is homed here
        self.room = {}      # sender -> Event its session waits on while over its budget
        self.groups = {}    # gid -> Group
        self.of_user = {}   # user -> set of gids
        self.table = None
        self.counters = collections.Counter()

    def __repr__(self):
        return f"<Groups {len(self.groups)} groups {dict(self.counters)}>"

    def describe(self):
        return {"groups": len(self.groups), "active": sum(g.worker is not None for g in self.groups.values()),
                **self.counters}

    def open(self, table):
        """Load every group from ``table`` (a whatsup.store.tables.Table)."""
        self.table = table
        for gid, rec in table.load().items():
            self._index(Group(gid, rec["name"], {u: a for u, a in rec["members"]}))
        return self

    # --- frames (each returns an immediate answer frame, or None when it comes later) ---

    def create(self, user, pid, f):
        ref = f["ref"]
        wanted = [m for m in dict.fromkeys(f.get("members", ())) if m != user]
        self._check_users(wanted, ref)
        self._check_size(1 + len(wanted), ref)
        gid = "g" + uuid.uuid4().hex[:16]
        while not self.placed(gid):  # in a cluster: an id this node is the home of
            gid = "g" + uuid.uuid4().hex[:16]
        group = Group(gid, f["name"], {user: True, **dict.fromkeys(wanted, False)})
        self._index(group)
        log.info("%s created group %s with %d members", user, group.gid, len(group.members))

        def op(group):
            done = self._answer(pid, {"type": "ok", "ref": ref, "group": group.gid})
            self._store(group, done)
            self._event(group, list(group.members), done, "created", user, name=group.name,
                        members=list(group.members))
            done.release()
        return self._serial(group.gid, ref, op)

    def add(self, user, pid, f):
        def op(group):
            self._admin(group, user, f["ref"])
            new = [m for m in dict.fromkeys(f["members"]) if m not in group.members]
            self._check_users(new, f["ref"])
            self._check_size(len(group.members) + len(new), f["ref"])
            if not new:
                return self.router.reply(pid, {"type": "ok", "ref": f["ref"]})  # a no-op: no event
            for m in new:
                group.members[m] = False
                self._link(m, group)
            self._change(group, pid, f["ref"], list(group.members), "added", user, members=new)
        return self._serial(f["group"], f["ref"], op)

    def remove(self, user, pid, f):
        def op(group):
            self._admin(group, user, f["ref"])
            gone = [m for m in dict.fromkeys(f["members"]) if m in group.members and m != user]
            if not gone:
                return self.router.reply(pid, {"type": "ok", "ref": f["ref"]})  # a no-op: no event
            recipients = list(group.members)
            for m in gone:
                self._drop(group, m)
            self._change(group, pid, f["ref"], recipients, "removed", user, members=gone)
        return self._serial(f["group"], f["ref"], op)

    def leave(self, user, pid, f):
        def op(group):
            self._member(group, user, f["ref"])
            recipients = list(group.members)
            self._drop(group, user)
            if group.members and not group.admins():  # WhatsApp: the oldest member takes over
                heir = next(iter(group.members))
                group.members[heir] = True
                extra = {"heir": heir}
            else:
                extra = {}
            self._change(group, pid, f["ref"], recipients, "left", user, members=[user], **extra)
        return self._serial(f["group"], f["ref"], op)

    def set_admin(self, user, pid, f):
        def op(group):
            ref, who = f["ref"], f["user"]
            self._admin(group, user, ref)
            self._member(group, who, ref)
            if not f["admin"] and group.admins() == [who]:
                raise ProtocolError(Code.BAD_FIELD, "a group keeps at least one admin", ref)
            group.members[who] = f["admin"]
            self._change(group, pid, ref, list(group.members), "admin", user, user=who, admin=f["admin"])
        return self._serial(f["group"], f["ref"], op)

    def rename(self, user, pid, f):
        def op(group):
            self._admin(group, user, f["ref"])
            group.name = f["name"]
            self._change(group, pid, f["ref"], list(group.members), "renamed", user, name=group.name)
        return self._serial(f["group"], f["ref"], op)

    def info(self, user, pid, f):
        group = self._group(f["group"], f["ref"])
        self._member(group, user, f["ref"])
        return {"type": "group_info", "ref": f["ref"], "group": group.gid, "name": group.name,
                "members": list(group.members), "admins": group.admins()}

    def list(self, user, pid, f):
        groups = [self.groups[gid] for gid in sorted(self.of_user.get(user, ()))]
        return {"type": "groups", "ref": f["ref"],
                "groups": [{"group": g.gid, "name": g.name, "size": len(g.members)} for g in groups]}

    def message(self, sender, pid, f):
        """A ``msg`` with ``group``: queue it for the group's worker and return at once, so the
        session reads the sender's next messages and a pipelining sender's messages are fanned
        out together. The ✓ comes once every copy is durable; a refusal (not a member, the
        group dissolved meanwhile) comes the same way, as a reply to the session.

        What one sender can have in flight is bounded by ``groups.sender_budget`` copies: over
        it, its session waits here (it stops reading its socket) until answers come; nothing
        is dropped. A single message bigger than the budget still goes, alone. The copies one
        sender makes are also paced (``groups.sender_copies`` per second after a burst): over
        that, too, its session waits, so a member flooding a big group of offline members
        cannot fill the node's memory at the speed of its connection (+210 MB in 10 s of
        ops/attack.py's big-group flood before)."""
        group = self._group(f["group"], f["ref"])
        m = _Message(sender, pid, f, max(1, len(group.members) - 1))
        wait = self.pace.delay(sender, m.cost)
        if wait:
            self.counters["pace_waits"] += 1
            gevent.sleep(wait)
        while self.spending.get(sender) and self.spending[sender] + m.cost > self.budget:
            self.counters["budget_waits"] += 1
            self.room.setdefault(sender, Event()).wait()
        self._queue(group, m, f["ref"], None)
        self.spending[sender] = self.spending.get(sender, 0) + m.cost

    def _spend(self, m):
        """``m`` is answered: its copies leave its sender's budget (once)."""
        if m.cost:
            left = self.spending.pop(m.sender) - m.cost
            if left:
                self.spending[m.sender] = left
            m.cost = 0
            room = self.room.pop(m.sender, None)
            if room is not None:
                room.set()

    def _messages(self, group, batch):
        """Fan out a batch of ``_Message`` (in arrival order); returns each one's refusal (a
        ProtocolError) or None. Their intents are made durable first (:meth:`_intents`), then
        each gets one G record per shard, then every member is poked once for the batch."""
        answers, ready = [], []
        for m in batch:
            try:
                self._alive(group, m.ref)
                if not self.router.retransmit(m.sender, m.pid, m.ref, m.cid, group.gid):
                    self._member(group, m.sender, m.ref)
                    # tracked now: a repeat of its id later in the batch is a retransmission
                    m.pending = self.router.track(m.sender, m.cid, group.gid, waiter=(m.pid, m.ref))
                    ready.append(m)
                answers.append(None)
            except ProtocolError as exc:
                answers.append(exc)
        for m in batch:
            if m not in ready:
                self._spend(m)
        members = list(group.members)
        home, ready = self._intents(group, members, ready)
        if ready:
            parts, lost = self.router.partition(members)
            served = 0
            for m in ready:
                done = AllDurable(functools.partial(self._fanned_out, home, m))
                self.router.copies(group.gid, m.sender, m.cid, group_frame(group.gid, m.sender, m.cid, m.body),
                                   parts, lost, done)
                done.release()
                served += len(members)
                if served >= self.chunk * 16:
                    served = 0
                    let_others_run()
            for n, user in enumerate(members, 1):
                self.router.poke(user)
                if not n % self.chunk:
                    let_others_run()  # other sessions run, and the hub polls I/O
            self.counters["copies"] += len(ready) * (len(members) - 1)
            self.counters["messages"] += len(ready)
            self.counters["batches"] += 1
        return answers

    def _intents(self, group, members, batch):
        """Write each message's intent (body and members) on the group's home shard and wait
        until they are durable: ``(home spool, the messages whose intent is)``. A message whose
        intent could not be stored is answered store_failed (nothing of it was queued)."""
        if not batch:
            return None, batch
        try:
            home = self.offd.spool(group.gid)
        except ShardDown as exc:
            for m in batch:
                self.router.durable(m.sender, m.cid, m.pending, exc)
                self._spend(m)
            return None, []
        failed, written = {}, AsyncResult()
        all_written = AllDurable(lambda err: written.set())
        for m in batch:
            all_written.expect()

            def stored(err, m=m):
                if err is not None:
                    failed[m] = err
                all_written()
            m.intent = home.intent(group.gid, m.sender, m.cid, m.body, [u for u in members if u != m.sender],
                                   stored)
            m.pending.ts = m.intent.ts
        all_written.release()
        written.get()  # the writer always answers: fsynced, failed, or flushed by the shard's terminate
        for m, err in failed.items():
            home.finished((m.sender, m.cid))
            self.router.durable(m.sender, m.cid, m.pending, err)
            self._spend(m)
        return home, [m for m in batch if m not in failed]

    def _fanned_out(self, home, m, err):
        self.router.fanned_out(home, m.sender, m.cid, m.pending, m.intent, err)
        self._spend(m)

    def members_of(self, user, gid, ref):
        """The members of ``gid``, which ``user`` must belong to (for typing)."""
        group = self._group(gid, ref)
        self._member(group, user, ref)
        return list(group.members)

    def dissolve(self, gid, by):
        """An operator deletes group ``gid``: in its order of operations, every member gets a
        ``dissolved`` group_event and the group is gone (ProtocolError unknown_group if none)."""
        def op(group):
            recipients = list(group.members)
            for m in recipients:
                self._drop(group, m)
            self._change(group, None, None, recipients, "dissolved", by)
        return self._serial(gid, None, op)

    # --- internals ---------------------------------------------------------------------

    def _serial(self, gid, ref, op):
        """Queue ``op`` (``op(group)``, or a _Message) on the group and wait until it has run.

        The group's process runs the queue in order (see :meth:`_work`). A
        ProtocolError from ``op`` is handed back and re-raised here, in the session,
        so it is answered and counted like any refused frame. A process that dies
        answers what it held (:meth:`_orphaned`); ``op_timeout`` bounds the wait anyway.
        """
        result = AsyncResult()
        self._queue(self._group(gid, ref), op, ref, result)
        try:
            refused = result.get(timeout=self.op_timeout)
        except gevent.Timeout:
            self.counters["op_timeouts"] += 1
            raise ProtocolError(Code.INTERNAL, f"group {gid} did not answer within {self.op_timeout}s; "
                                "the change may still be made", ref) from None
        if refused is not None:
            raise refused

    def _queue(self, group, op, ref, result):
        """Append ``op`` to the group's queue, for the group's process (started if it has none);
        its refusal or None goes to ``result`` (an AsyncResult), or, for a queued message
        (``result`` None), to its session as an error. store_failed while the groups'
        supervisor restarts (no group runs unsupervised)."""
        if group.worker is not None:
            try:
                self.processes.notify(group.worker, WORK)
            except ProcessDead:  # killed before it ran its init, so before it could say so
                group.worker = None
        if group.worker is None:
            proc = Process(self.processes, GroupProcess, (self, group), entity=group.gid)
            try:
                adopt(self.processes, SUPERVISOR, proc)
            except ProcessDead:
                raise ProtocolError(Code.STORE_FAILED, "the groups are restarting; retry", ref) from None
            proc.mailbox.put(WORK)
            group.worker = proc.start()
        group.ops.append((op, ref, result))

    def _answer_op(self, op, result, answer):
        if _is_message(op) and answer is not None:
            self._spend(op)
        if result is not None:
            result.set(answer)
        elif answer is not None:
            self.counters["refused:" + answer.code] += 1
            self.router.reply(op.pid, answer.frame())

    def _work(self, worker):
        """In the group's process: run the queued operations in order; consecutive messages (up to
        BATCH) as one fan-out. ``worker.current`` holds those in hand."""
        group = worker.group
        ops = group.ops
        while ops:
            if _is_message(ops[0][0]):
                batch = []
                while ops and _is_message(ops[0][0]) and len(batch) < BATCH:
                    batch.append(ops.popleft())
                worker.current = batch
                answers = self._guarded(group, batch[0][1], self._messages, [m for m, _, _ in batch])
                if not isinstance(answers, list):  # the whole batch failed
                    answers = [answers] * len(batch)
                for (m, _, result), answer in zip(batch, answers):
                    self._answer_op(m, result, answer)
            else:
                op, ref, result = entry = ops.popleft()
                worker.current = (entry,)
                self._answer_op(op, result, self._guarded(group, ref, self._one, op, ref))
            worker.current = ()

    def _orphaned(self, pid, worker):
        """The group's process ``pid`` exited: the changes it held in hand and the operations still
        queued are answered (internal), so nobody waits forever; the next operation starts a new
        process. (Messages in hand are answered by their fan-out's durability, as ever.)"""
        group = worker.group
        if group.worker == pid:
            group.worker = None
        for op, ref, result in worker.current:
            if result is not None and not result.ready():
                result.set(ProtocolError(Code.INTERNAL, "the group operation failed", ref))
        while group.ops:
            op, ref, result = group.ops.popleft()
            self._answer_op(op, result, ProtocolError(Code.INTERNAL, "the group operation failed", ref))

    def _one(self, group, op, ref):
        self._alive(group, ref)
        op(group)

    @staticmethod
    def _guarded(group, ref, run, *args):
        """``run(group, *args)``'s value; a ProtocolError it raises, or INTERNAL for any other failure."""
        try:
            return run(group, *args)
        except ProtocolError as exc:
            return exc
        except Exception:
            log.exception("group %s: operation failed", group.gid)
            return ProtocolError(Code.INTERNAL, "the group operation failed", ref)

    def _alive(self, group, ref):
        if self.groups.get(group.gid) is not group:  # dissolved while it waited
            raise ProtocolError(Code.UNKNOWN_GROUP, f"no such group {group.gid!r}", ref)

    def _change(self, group, pid, ref, recipients, event, by, **fields):
        """Store the changed group and tell ``recipients``; ``ok`` once all of it is durable."""
        done = self._answer(pid, {"type": "ok", "ref": ref})
        self._store(group, done)
        self._event(group, recipients, done, event, by, **fields)
        done.release()

    def _answer(self, pid, ok):
        return AllDurable(self.router.ok_when_durable(pid, ok))

    def _store(self, group, done):
        if group.members:
            self.table.put(group.gid, group.record(), done.expect())
        else:
            del self.groups[group.gid]
            self.table.put(group.gid, None, done.expect())
            log.info("group %s dissolved: no members left", group.gid)

    def _event(self, group, recipients, done, event, by, **fields):
        """Queue the event for every one of ``recipients`` (one item each), poking them and
        yielding to the hub every ``chunk``; one whose shard is down misses it (logged)."""
        frame = {"type": "group_event", "group": group.gid, "event": event, "by": by, **fields}
        parts, lost = self.router.partition(recipients)
        for user, exc in lost:  # the change stands; this member misses its event
            log.error("group %s: %s event lost for %s: %s", group.gid, event, user, exc)
            done.expect()(exc)
        n = 0
        for spool, users in parts.items():
            for user in users:
                spool.put(user, "event", dict(frame), on_durable=done.expect(), force=True)
                n += 1
                if not n % self.chunk:
                    let_others_run()  # other sessions run, and the hub polls I/O
        self.counters["events"] += n

    def _index(self, group):
        self.groups[group.gid] = group
        for m in group.members:
            self._link(m, group)

    def _link(self, user, group):
        self.of_user.setdefault(user, set()).add(group.gid)

    def _drop(self, group, user):
        del group.members[user]
        gids = self.of_user.get(user)
        if gids is not None:
            gids.discard(group.gid)
            if not gids:
                del self.of_user[user]

    def _group(self, gid, ref):
        group = self.groups.get(gid)
        if group is None:
            raise ProtocolError(Code.UNKNOWN_GROUP, f"no such group {gid!r}", ref)
        return group

    @staticmethod
    def _member(group, user, ref):
        if user not in group.members:
            raise ProtocolError(Code.NOT_MEMBER, f"{user} is not a member of {group.gid}", ref)

    def _admin(self, group, user, ref):
        self._member(group, user, ref)
        if not group.members[user]:
            raise ProtocolError(Code.NOT_ADMIN, f"only admins of {group.gid} may do that", ref)

    def _check_users(self, users, ref):
        unknown = [u for u in users if not self.accounts.exists(u)]
        if unknown:
            raise ProtocolError(Code.UNKNOWN_USER, f"no such user {unknown[0]!r}", ref)

    def _check_size(self, n, ref):
        if n > self.max_members:
            raise ProtocolError(Code.GROUP_FULL, f"a group has at most {self.max_members} members "
                                f"(groups.max_members); this would make {n}", ref)
