"""Every user has a home node (the map's owner of their shard): their account, their offd
queue and the record of their session live there; a session may be on any node.

As the **session's node** (the user is homed elsewhere), a node:

* asks the home at login (``attach``: the home registers the session's pid in its
  session manager, replacing an older one wherever it is, and says how much is queued),
  and tells it at the end (``detach``);
* forwards the device's acks (``acked``) and the requests the home serves (a message
  to a user homed there, a read receipt: whatsup/routing/router.py, ``Router.remote``);
* receives the queued items the home pushes (``("items", bodies)`` in the session's mailbox).

As the **home** of a user whose session is elsewhere, a node sends that session what
the user's queue holds, within ``session.window`` unacked items, as the session would
itself: a poke for a remote pid (whatsup/cluster/link.py) marks the user due, and one
pass a hub turn later pushes everything due, one pipeline for all of it.

When a node goes down (its lease lapsed or it restarted), its homes forget the
sessions it held (presence goes offline), and the sessions it served are
attached again when it is back (it pushes their queues from the start: devices
skip the seqs they have seen).
"""
import functools
import itertools
import logging

import gevent
from gevent.event import AsyncResult

from .link import NodeDown, RemoteError
from ..protocol import Code, ProtocolError, Template, error_frame
from ..c2s.admission import Refused
from ..runtime import ProcessDead, Task
from ..routing.router import AllDurable
from ..store.accounts import UserTaken
from ..store.offd import ShardDown

log = logging.getLogger("whatsup.cluster")
#: Frames served by the home of what they name: frame type -> (the key naming it, None for the
#: sender's own; the feature and method serving it there). Presence lives where the user's sessions
#: are registered, a block list where its owner is homed, a group where it was created.
ROUTED = {"typing": ("to", "presence", "typing"), "presence_sub": ("user", "presence", "subscribe"),
          "presence_unsub": ("user", "presence", "unsubscribe"), "privacy": (None, "presence", "privacy"),
          "block": (None, "blocks", "block"), "unblock": (None, "blocks", "unblock"),
          "block_list": (None, "blocks", "list"), "group_add": ("group", "groups", "add"),
          "group_remove": ("group", "groups", "remove"), "group_leave": ("group", "groups", "leave"),
          "group_admin": ("group", "groups", "set_admin"), "group_rename": ("group", "groups", "rename"),
          "group_info": ("group", "groups", "info"), "link_code": (None, "devices", "link_code"),
          "devices": (None, "devices", "list"), "unlink": (None, "devices", "unlink"),
          "info": ("to", "router", "info")}
#: What another node has the home of a user do for that user (Homes.at_home): the truth of their
#: bans, retired name, link codes and devices is there, as their account is.
AT_HOME = {"lifecycle": ("ban", "unban", "delete", "close_sessions"),
           "devices": ("link", "unlink_device", "logged_in")}


class Homes:
    def __init__(self, link, sm, offd, accounts, window, budget):
        self.link, self.sm, self.offd, self.accounts = link, sm, offd, accounts
        self.router = self.presence = self.blocks = self.groups = self.lifecycle = self.devices = None  # wire()
        self.spools = {}  # node -> RemoteSpool: what a fan-out here queues for users homed there
        self.subscribed = set()  # our sessions that subscribed to presence on other nodes
        self.window, self.budget = window, budget
        self.remote = {}      # pid on another node -> (user homed here, device) it serves
        self.due = set()      # those pids that have something to get
        self.pushed = {}      # those pids -> [push generation, items pushed in it] (see _push_due)
        self._generations = itertools.count(1)
        self._flush = None
        self.learnt = set()   # the nodes whose users' names we hold (learnt since they came up)
        link.pokes = self.poke
        sm.placed = self._placed
        link.watchers.append(self._node_changed)
        link.reconnected += [self._resend, self._relearn]
        link.services.update({
            "attach": self._attach, "detach": self._detach, "acked": self._acked, "put": self._put,
            "account": self._account, "account_put": self._account_put, "users": self._users,
            "user": self._user, "devices_of": self._devices_of, "route": self._route, "gone": self._gone,
            "blocks_of": self._blocks_of, "blocked": self._blocked, "reattach": self._reattach,
            "resync": self._resync})

    def __repr__(self):
        return f"<Homes remote_sessions={len(self.remote)} due={len(self.due)}>"

    def wire(self, router, presence, blocks, groups, lifecycle, devices):
        """The services a home runs for sessions on other nodes (Router.remote forwards them)."""
        self.router, self.presence, self.blocks, self.groups = router, presence, blocks, groups
        self.lifecycle, self.devices = lifecycle, devices
        blocks.shared = self._share_blocks
        groups.placed = blocks.placed = self.here
        lifecycle.remote = devices.remote = self
        presence.relayed = self._relay
        self.link.services.update({
            "put_group": self._put_group, "put_each": self._put_each, "group_msg": self._group_msg,
            "groups_of": self._groups_of, "relay": self._relayed, "read": self._read, "history": self._history,
            "home": self._at_home, "lifecycle_set": lifecycle.learn, "lifecycle_of": self._lifecycle_of,
            "forget": self._forget, "devices_set": self.accounts.companions, "device_token": self.accounts.device_token,
            "message": lambda pid, ref, sender, cid, to, body, device: router.message(
                sender, pid, ref, cid, to, body, device)})
        self.link.blocking |= {"group_msg", "route", "attach", "home"}

    # --- as the session's node ---------------------------------------------------------

    def here(self, user):
        return self.link.here(user)

    def knows(self, user):
        """Whether this node holds the names homed where ``user`` is: until a node's users are
        learnt (a moment after it or we start), a name of its unknown here is not yet "no such
        user" (accounts.verify answers store_failed, retry, instead of auth_failed)."""
        return self.here(user) or self.home(user) in self.learnt

    def home(self, user):
        return self.link.home(user)

    def attach(self, user, device, pid):
        """Register session ``pid`` of ``device`` with ``user``'s home; returns how many items
        wait there. Raises NodeDown (the home is down or did not answer in time)."""
        return self.link.call(self.home(user), "attach", user, device, pid)

    def detach(self, user, device, pid):
        self.link.cast(self.home(user), "detach", user, device, pid)

    def ack(self, user, device, pid, seq):
        self.link.cast(self.home(user), "acked", user, device, pid, seq)

    def forward(self, owner, pid, ref, name, *args):
        """The request ``name`` of session ``pid`` is served by ``owner``'s home."""
        self.link.forward(self.home(owner), pid, ref, name, *args)

    def elsewhere(self, ftype, user, pid, f):
        """Forward frame ``f`` of session ``pid`` to the home it concerns (see ROUTED); True when
        it went (its answer comes back as a reply), False when it is served here."""
        if ftype == "group_list":
            self._list_groups(user, pid, f["ref"])
            return True
        if ftype not in ROUTED:
            return False
        key = "group" if ftype == "typing" and "group" in f else ROUTED[ftype][0]
        entity = user if key is None else f.get(key)
        if not isinstance(entity, str) or self.here(entity):
            return False
        if ftype == "presence_sub":
            self.subscribed.add(pid)
        ref = f.get("ref")
        if ref is None:
            self.link.cast(self.home(entity), "route", pid, None, ftype, user, f)
        else:
            self.forward(entity, pid, ref, "route", ftype, user, f)
        return True

    def _list_groups(self, user, pid, ref):
        """``group_list``: a group lives on its home node, so every node is asked for the groups
        of ``user`` it homes (one request each) and the answer merges them; store_failed
        (retry) while a node of the map is down, rather than a list missing its groups."""
        down = sorted(set(self.link.map.nodes) - set(self.link.live))
        found, left = [], [len(self.link.live)]

        def answered(node, ok, groups):
            if ok:
                found.extend(groups)
            else:
                down.append(node)
            left[0] -= 1
            if not left[0]:
                self.router.reply(pid, error_frame(Code.STORE_FAILED, f"the groups on {down[0]} cannot be "
                                                   "listed now; retry", ref) if down else
                                  {"type": "groups", "ref": ref, "groups": sorted(found, key=lambda g: g["group"])})
        for node in sorted(self.link.live):
            if node == self.link.node:
                answered(node, True, self._groups_of(user))
            else:
                self.link.request(node, "groups_of", (user,), functools.partial(answered, node))

    def _relay(self, users, frame):
        """Presence relays ``frame`` (typing) to ``users``: those homed elsewhere get it from
        their home, which knows all their sessions (one cast per node, whatever the number of
        users there); returns the users homed here."""
        here, away = [], {}
        for user in users:
            (here.append(user) if self.here(user) else away.setdefault(self.home(user), []).append(user))
        for node, members in away.items():
            self.link.cast(node, "relay", members, frame)
        return here

    def gone(self, pid):
        """Session ``pid`` ended: the homes it subscribed on drop its subscriptions, those it sent
        requests to its lanes."""
        self.link.ended(pid)
        if pid in self.subscribed:
            self.subscribed.discard(pid)
            for node in self.link.live:
                if node != self.link.node:
                    self.link.cast(node, "gone", pid)

    def spool_of(self, user):
        """What a group fan-out (Router.partition) puts ``user``'s copy through: their home's."""
        node = self.home(user)
        spool = self.spools.get(node)
        if spool is None:
            spool = self.spools[node] = RemoteSpool(self, node)
        return spool

    def put(self, user, kind, frame, on_durable, force):
        """Queue ``frame`` for ``user`` in their home's offd; ``on_durable(err)`` once it is
        fsynced there (err None) or failed (the home down, Redis lost for too long...)."""
        self.link.request(self.home(user), "put", (user, kind, frame, force), _answered(on_durable))

    # --- accounts of users homed elsewhere (whatsup/store/accounts.py calls these) -------

    def record(self, user):
        return self.link.call(self.home(user), "account", user)

    def store(self, user, record, new=False):
        try:
            self.link.call(self.home(user), "account_put", user, record, new)
        except RemoteError as exc:
            if str(exc).startswith("UserTaken"):
                raise UserTaken(user) from None
            raise

    def announce(self, user, exists):
        """Tell every other node that ``user`` now exists (or no longer does)."""
        for node in self.link.live:
            if node != self.link.node:
                self.link.cast(node, "user", user, exists)

    # --- what a user's home keeps: bans, retired name, devices (lifecycle.py, devices.py) ----

    def at_home(self, user, feature, verb, *args):
        """``verb`` of ``feature`` (AT_HOME) for ``user``, done by their home: its value. Raises
        what it raised there: Refused (with its code: a refused link...), KeyError (no such
        user), NodeDown (the home is down: retry)."""
        try:
            value = self.link.call(self.home(user), "home", feature, verb, args)
        except RemoteError as exc:
            if str(exc).startswith("KeyError"):
                raise KeyError(user) from None
            raise
        if isinstance(value, dict) and "refused" in value:
            raise Refused(*value["refused"])
        return value

    def device_token(self, user, device, hashed):
        return self.link.call(self.home(user), "device_token", user, device, hashed)

    def seen_at_home(self, user, device):
        """Companion ``device`` of ``user`` logged in here: their home stores when (and unlinks
        their companions away too long), without the login waiting for it."""
        self.link.cast(self.home(user), "home", "devices", "logged_in", (user, device))

    def share_devices(self, user, row):
        """``user``'s devices (homed here) changed: every node's copy too (a companion's token
        is checked, and the user's devices counted, where the session is)."""
        for node in self.link.live:
            if node != self.link.node:
                self.link.cast(node, "devices_set", user, row)

    def share(self, name, user, value):
        """``user`` (homed here) was banned, unbanned or retired: every other node's copy too."""
        for node in self.link.live:
            if node != self.link.node:
                self.link.cast(node, "lifecycle_set", name, user, value)

    def forget(self, user):
        """``user`` (homed here) is deleted: each node has them leave the groups it homes and
        drops its users' blocks of them; returns the groups left (a node down keeps its own)."""
        left = []
        for node in sorted(self.link.live):
            try:
                left += self.link.call(node, "forget", user)
            except (NodeDown, RemoteError) as exc:
                log.error("cluster: %s deleted, but not forgotten on %s (%s)", user, node, exc)
        return left

    # --- as the home ----------------------------------------------------------------------

    def _at_home(self, feature, verb, args):
        if verb not in AT_HOME.get(feature, ()):
            raise ValueError(f"no such service at home: {feature}.{verb}")
        try:
            return getattr(getattr(self, feature), verb)(*args)
        except (ProtocolError, Refused) as exc:
            return {"refused": [exc.code, str(exc), exc.retry_after]}

    def _history(self, pid, ref, user, device, to_device, bundle):
        self.router.history(user, device, pid, ref, to_device, bundle)

    def _lifecycle_of(self):
        """The bans and retired names of the users homed here (what other nodes hold in RAM)."""
        return {name: {u: v for u, v in getattr(self.lifecycle, name).items() if self.here(u)}
                for name in ("bans", "retired")}

    def _forget(self, user):
        gids = [g["group"] for g in self._groups_of(user)]
        for gid in gids:
            self.lifecycle.leave(user, gid)
        if not self.here(user):  # the home forgets its own after purging the queue
            self.blocks.forget(user)
        return gids

    def _attach(self, user, device, pid):
        spool = self.offd.spool(user)  # first: a restarting shard fails the login, changing nothing
        online = self.sm.lookup(user) is not None
        old = self.sm.register(user, device, pid)
        if old is not None:
            self.router.tell(old, ("replaced",))
            self.remote.pop(old, None)
        elif not online and self.presence is not None:
            self.presence.online(user)
        if pid.node != self.link.node:
            self.remote[pid] = (user, device)
        queued = spool.login(user, device)  # what it was sent and did not ack goes again
        self._restart(pid)
        return queued

    def _detach(self, user, device, pid):
        self.remote.pop(pid, None)
        self.pushed.pop(pid, None)
        if self.sm.unregister(user, device, pid) and self.presence is not None:
            self.presence.offline(user)

    def _acked(self, user, device, pid, seq):
        if self.sm.lookup(user, device) != pid:
            return  # a replaced session's late ack: its items come again to the new one
        spool = self.offd.current(user)
        if spool is not None:  # while the shard restarts the ack is dropped: the items come again
            self.router.acked(user, device, spool, seq)
        self.poke(pid)

    def _route(self, pid, ref, ftype, user, f):
        """A frame forwarded by the session's node (elsewhere): served as that node would, the
        answer (or the refusal) sent back to the session."""
        _, owner, method = ROUTED[ftype]
        try:
            answer = getattr(getattr(self, owner), method)(user, pid, f)
        except ProtocolError as exc:
            answer = exc.frame()
        if answer is not None:
            self.router.reply(pid, answer)

    def _group_msg(self, pid, ref, user, f):
        try:
            self.groups.message(user, pid, f)
        except ProtocolError as exc:
            self.router.reply(pid, exc.frame())

    def _gone(self, pid):
        self.presence.gone(pid)

    def _groups_of(self, user):
        return self.groups.list(user, None, {"ref": None})["groups"]

    def _relayed(self, users, frame):
        for user in users:
            session = self.sm.lookup(user)
            if session is not None:
                self.router.reply(session, frame)

    def _read(self, pid, ref, user, to, ids, group, device):
        """A ``read`` served here: by the reader's home (1:1), or by the group's home, which
        checks the reader belongs to it and holds the ids its members were sent."""
        if group is not None:
            try:
                self.groups.members_of(user, group, ref)
            except ProtocolError as exc:
                return self.router.reply(pid, exc.frame())
        self.router.read(user, pid, ref, to, ids, group, device)

    def _share_blocks(self, user, others):
        """``user`` (homed here) changed their block list: every other node holds a copy in RAM."""
        for node in self.link.live:
            if node != self.link.node:
                self.link.cast(node, "blocked", user, sorted(others))

    def _blocked(self, user, others):
        if others:
            self.blocks.blocked[user] = set(others)
        else:
            self.blocks.blocked.pop(user, None)

    def _blocks_of(self):
        return {u: sorted(o) for u, o in self.blocks.blocked.items() if self.here(u)}

    def _put(self, user, kind, frame, force):
        return self._put_each([(user, kind, frame, force)])

    def _put_each(self, entries):
        """Items ``(user, kind, frame, force)`` for users homed here; answered (None, or the first
        error) once every one is fsynced."""
        done = AsyncResult()
        stored = AllDurable(done.set)
        try:
            for user, kind, frame, force in entries:
                self.offd.spool(user).put(user, kind, frame, on_durable=stored.expect(), force=force)
        except ShardDown as exc:
            stored.expect()(exc)
        stored.release()
        err = done.get()
        return None if err is None else f"{type(err).__name__}: {err}"

    def _put_group(self, users, gid, sender, cid, head):
        """A group copy for ``users`` (homed here), one G record per local shard; answered once
        every one is fsynced. Done again after a crash of the group's home: members' devices
        drop a copy they showed (by group, sender and id)."""
        template = Template.__new__(Template)
        template.head = head
        parts, lost = self.router.partition(users)
        if lost:
            return f"ShardDown: {lost[0][1]}"
        done = AsyncResult()
        pending = [len(parts)]
        errors = []

        def stored(err):
            if err is not None:
                errors.append(err)
            pending[0] -= 1
            if not pending[0]:
                done.set(None)
        for spool, members in parts.items():
            spool.put_group(members, gid, sender, cid, template, stored)
        if parts:
            done.get()
        return f"{type(errors[0]).__name__}: {errors[0]}" if errors else None

    def _account(self, user):
        return self.accounts.stored(user)

    def _account_put(self, user, record, new):
        self.accounts.store(user, record, new)

    def _users(self):
        return sorted(self.accounts.own())

    def _devices_of(self):
        return {user: self.accounts.rows(user) for user in self.accounts.linked() if self.here(user)}

    def _user(self, user, exists):
        """``user``'s record changed on their home (registered, new password, deleted): a login
        here no longer passes on the password it remembered (KnownLogins)."""
        (self.accounts.users.add if exists else self.accounts.users.discard)(user)
        self.accounts.forget(user)

    # --- pushing to sessions on other nodes --------------------------------------------------

    def poke(self, pid):
        """Something for the remote session ``pid`` to get; True if ``pid`` is one we push to."""
        if pid not in self.remote:
            return False
        self.due.add(pid)
        if self._flush is None:
            self._flush = gevent.get_hub().loop.run_callback(self._push_due)
        return True

    def _push_due(self):
        self._flush = None
        due, self.due = self.due, set()
        for pid in due:
            user, device = self.remote.get(pid, (None, None))
            if user is None or self.sm.lookup(user, device) != pid:
                continue
            spool = self.offd.current(user)  # None while the shard restarts: it pokes when back
            items = spool.next_batch(user, device, self.window, self.budget) if spool is not None else ()
            if items:
                generation = self.pushed.setdefault(pid, [self._generation(), 0])
                try:
                    self.link.send(pid, ("items", [item.frame for item in items], *generation, self.link.node))
                except ProcessDead:
                    pass
                generation[1] += len(items)

    def _generation(self):
        return self.link.epoch * 1_000_000 + next(self._generations)

    def _restart(self, pid):
        """Push to ``pid`` from its first unacked item again, as a new generation: its node passes
        on a generation's items only without a gap (a lost push followed by a later one would
        make the device ack, cumulatively, what it never got)."""
        self.pushed[pid] = [self._generation(), 0]
        self.poke(pid)

    def _resync(self, pid):
        """The node of session ``pid`` saw a gap in what we pushed: again from its first unacked."""
        user, device = self.remote.get(pid, (None, None))
        spool = self.offd.current(user) if user is not None else None
        if spool is not None:
            spool.login(user, device)
            self._restart(pid)

    def _placed(self, user, pid, here):
        """A session of this node logged in (or ended): the directory in Redis says so, written
        in the outbox's next pipeline (for operators' look-ups; routing asks the homes)."""
        if pid.node == self.link.node:
            directory = self.link.directory
            for command in (directory.place_ops if here else directory.leave_ops)(user, pid):
                self.link.out.op(*command)

    def _resend(self):
        """Redis came back and may have lost its last second (appendfsync everysec): what was
        pushed to remote sessions may not have arrived. Push their queues again from the start
        (devices skip the seqs they have seen)."""
        for pid in list(self.remote):
            self._resync(pid)

    def _node_changed(self, node, epoch, up):
        if not up:
            self.learnt.discard(node)
            for pid, (user, device) in list(self.remote.items()):
                if pid.node == node:
                    self._detach(user, device, pid)
            for pid in list(self.presence.watching) if self.presence is not None else ():
                if pid.node == node:
                    self.presence.gone(pid)
            return
        # the node is back (or new): sessions here whose user it homes register with it again, and
        # it is asked to do the same for ours (it may have thought us down: a stalled hub, a partition)
        self._reattach(node)
        if node != self.link.node:
            self.link.cast(node, "reattach", self.link.node)
            self.link.table.spawn(Task, self._learn_users, (node,), entity=node)

    def _relearn(self):
        """Redis came back: a change another node sent meanwhile may be lost with its tail (a
        ban, an unlinked device...): what we hold of every node's users is learnt again."""
        for node in self.link.live:
            if node != self.link.node:
                self.link.table.spawn(Task, self._learn_users, (node,), entity=node)

    def _reattach(self, node):
        """Register with ``node`` every session here of a user it homes."""
        mine = [(user, device, pid) for user, devices in self.sm.sessions.items() if self.home(user) == node
                for device, pid in devices.items() if pid.node == self.link.node]
        for user, device, pid in mine:
            self.link.cast(node, "attach", user, device, pid)

    def _learn_users(self, node):
        """What every node holds in RAM of the users ``node`` homes: their names, devices, block
        lists, bans and retired names: what it answers replaces what we held of its users."""
        def learn(held, now, put):
            for user in [u for u in held if u not in now and self.home(u) == node]:
                put(user, None)
            for user, value in now.items():
                put(user, value)
        try:
            self.accounts.users.update(self.link.call(node, "users"))
            learn(self.blocks.blocked, self.link.call(node, "blocks_of"), self._blocked)
            learn(self.accounts.linked(), self.link.call(node, "devices_of"), self.accounts.companions)
            for name, records in self.link.call(node, "lifecycle_of").items():
                learn(getattr(self.lifecycle, name), records, functools.partial(self.lifecycle.learn, name))
            self.learnt.add(node)
        except (NodeDown, RemoteError) as exc:
            log.warning("cluster: the users of %s not learnt (%s)", node, exc)


class RemoteSpool:
    """The offd of another node as a group fan-out sees it (Router.copies, Groups._event): a
    message's copies for its users go there in one request, and so do the items put for them
    in one hub turn (a group event for every member: one hop per node, not per member)."""

    def __init__(self, homes, node):
        self.homes, self.node = homes, node
        self.batch = []  # (user, kind, frame, force) put since the last request
        self.waiting = []  # their durability callbacks

    def __repr__(self):
        return f"<RemoteSpool {self.node} batch={len(self.batch)}>"

    def put_group(self, users, gid, sender, cid, template, on_durable):
        self.flush()  # what was put before goes first: a member sees events and messages in order
        self.homes.link.request(self.node, "put_group", (users, gid, sender, cid, template.head),
                                _answered(on_durable))

    def put(self, user, kind, frame, on_durable=None, force=False, **_):
        if not self.batch:
            gevent.get_hub().loop.run_callback(self.flush)
        self.batch.append((user, kind, frame, force))
        self.waiting.append(on_durable or (lambda err: None))

    def flush(self):
        if not self.batch:
            return
        batch, waiting, self.batch, self.waiting = self.batch, self.waiting, [], []

        def stored(err):
            for on_durable in waiting:
                on_durable(err)
        self.homes.link.request(self.node, "put_each", (batch,), _answered(stored))


def _answered(on_durable):
    """A request's ``done(ok, value)`` for a durability callback: None once stored there, else
    the error (what the service answered, or why no answer came)."""
    def done(ok, value):
        on_durable(None if ok and value is None else RemoteError(value if ok else str(value)))
    return done
