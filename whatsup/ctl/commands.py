"""The commands of the control socket (docs/ADMIN.md): each a function of the node's services.

Every command is declared once, with its arguments (name -> (required, type))
and whether it changes anything, by :func:`command`; the server checks the
arguments before calling, logs every change with the peer's uid, and turns
the exceptions below into stable error codes. Commands run in the control
connection's greenlet: they may wait (a hash, a commit), never block the hub.
"""
import time

from ..store.accounts import UserTaken
from ..users.lifecycle import OPERATOR
from ..protocol import PRIMARY, ProtocolError, check_account
from ..shell.helpers import Helpers
from . import Refused

COMMANDS = {}  # "users.ban" -> Command


class Command:
    __slots__ = ("name", "fn", "args", "changes", "doc")

    def __init__(self, name, fn, args, changes):
        self.name, self.fn, self.args, self.changes = name, fn, args, changes
        self.doc = (fn.__doc__ or "").strip().splitlines()[0]

    def check(self, args):
        """``args`` as the function takes them; Refused("bad_args") when they do not fit."""
        if not isinstance(args, dict):
            raise Refused("bad_args", "args is a JSON object")
        unknown = set(args) - set(self.args)
        if unknown:
            raise Refused("bad_args", f"{self.name}: unknown argument {sorted(unknown)[0]!r}")
        out = {}
        for name, (required, kind) in self.args.items():
            if name not in args or args[name] is None:
                if required:
                    raise Refused("bad_args", f"{self.name}: missing argument {name!r}")
                continue
            value = args[name]
            if kind is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
                raise Refused("bad_args", f"{self.name}: {name} must be {kind.__name__}")
            out[name] = value
        return out


def command(name, changes=False, **args):
    """Declare a command; ``args`` maps an argument to (required, type)."""
    def register(fn):
        COMMANDS[name] = Command(name, fn, args, changes)
        return fn
    return register


USER = (True, str)


def _user(node, user):
    if not node.accounts.exists(user):
        raise Refused("unknown_user", f"no such user {user!r}")
    return user


def _session(node, pid):
    """What the control socket shows of a session process (None if it is gone)."""
    proc = node.table.procs.get(pid.n)
    if proc is None:
        return None
    detail = proc.info()["detail"] or {}
    addr = detail.get("addr")
    return {"user": detail.get("user"), "device": detail.get("device"), "pid": repr(pid), "node": pid.node,
            "addr": f"{addr[0]}:{addr[1]}" if addr else None, "since": round(proc.started, 3)}


# --- users ---------------------------------------------------------------------------------

@command("users.list", online=(False, bool))
def users_list(node, who, online=False):
    """Every account (or only those online), with online and banned flags."""
    users = sorted(node.sm.sessions) if online else sorted(node.accounts.users)
    return [{"user": u, "online": node.sm.lookup(u) is not None, "banned": node.lifecycle.banned(u) is not None}
            for u in users]


@command("users.show", user=USER)
def users_show(node, who, user):
    """One account: its record, session, queue, groups, blocks and ban."""
    _user(node, user)
    pid = node.sm.lookup(user)
    items = node.offd.items(user)
    return {"user": user, **node.accounts.record(user), "session": _session(node, pid) if pid else None,
            "queued": len(items), "queued_bytes": sum(len(i.frame) for i in items),
            "groups": [g["group"] for g in node.groups.list(user, None, {"ref": 0})["groups"]],
            "blocked": node.blocks.list(user, None, {"ref": 0})["users"],
            "banned": node.lifecycle.banned(user), "where": node.where("offd", user)}


def _checked(node, user, password):
    """``register``'s rules for a name and a password (ProtocolError bad_username|bad_password)."""
    check_account(user, password, vars(node.cfg.accounts), None)
    return password


@command("users.register", changes=True, user=USER, password=(True, str))
def users_register(node, who, user, password):
    """Register an account, whatever accounts.registration says (a retired name too)."""
    try:
        node.accounts.register(user, _checked(node, user, password), OPERATOR, limited=False)
    except UserTaken:
        raise Refused("user_taken", f"{user!r} is taken") from None
    return {"user": user}


@command("users.unregister", changes=True, user=USER)
def users_unregister(node, who, user):
    """Delete an account everywhere (sessions, queue, groups, blocks); its name is retired."""
    return node.lifecycle.delete(_user(node, user))


@command("users.ban", changes=True, user=USER, reason=(False, str))
def users_ban(node, who, user, reason="banned by the operator"):
    """Refuse the user's logins and close their session."""
    return {"user": user, **node.lifecycle.ban(_user(node, user), reason, who)}


@command("users.unban", changes=True, user=USER)
def users_unban(node, who, user):
    """Let a banned user log in again."""
    return {"user": user, "was_banned": node.lifecycle.unban(_user(node, user))}


@command("users.set-password", changes=True, user=USER, password=(True, str))
def users_set_password(node, who, user, password):
    """Set a user's password; their session is closed with password_changed."""
    closed = node.lifecycle.set_password(_user(node, user), _checked(node, user, password))
    return {"user": user, "sessions_closed": len(closed)}


@command("users.kick", changes=True, user=USER, reason=(False, str))
def users_kick(node, who, user, reason="disconnected by the operator"):
    """Close the user's session (they may log in again)."""
    closed = node.lifecycle.close_sessions(_user(node, user), "kicked", reason)
    return {"user": user, "sessions_closed": len(closed)}


@command("sessions.list")
def sessions_list(node, who):
    """Who is connected, from where, since when, on which node."""
    rows = [_session(node, pid) for user, devices in sorted(node.sm.sessions.items())
            for _, pid in sorted(devices.items())]
    return [r for r in rows if r is not None]


# --- devices -------------------------------------------------------------------------------

@command("devices.list", user=USER)
def devices_list(node, who, user):
    """A user's devices: the primary and the companions linked, with their times and whether online."""
    return node.devices.list(_user(node, user), None, {"ref": None})["devices"]


@command("devices.unlink", changes=True, user=USER, device=(True, int))
def devices_unlink(node, who, user, device):
    """Unlink a companion device: its token is revoked, its session closed, its items released."""
    if device == PRIMARY:  # as the protocol's unlink frame answers
        raise Refused("primary_device", "the primary device cannot be unlinked")
    if not node.devices.unlink_device(_user(node, user), device, f"unlinked by {who}"):
        raise Refused("unknown_device", f"{user} has no companion device {device}")
    return {"user": user, "device": device, "unlinked": True}


# --- queues --------------------------------------------------------------------------------

@command("queue.show", user=USER, limit=(False, int))
def queue_show(node, who, user, limit=100):
    """What offd holds for a user: count, bytes, and the first ``limit`` items."""
    _user(node, user)
    items = node.offd.items(user)
    return {"user": user, "count": len(items), "bytes": sum(len(i.frame) for i in items),
            "items": [{"seq": i.seq, "ts": i.ts, "kind": i.kind, "from": i.sender, "id": i.cid,
                       "bytes": len(i.frame)} for i in items[:max(0, limit)]]}


@command("queue.purge", changes=True, user=USER)
def queue_purge(node, who, user):
    """Drop everything offd holds for a user."""
    items = node.offd.purge(_user(node, user))
    return {"user": user, "purged": len(items), "bytes": sum(len(i.frame) for i in items)}


# --- groups --------------------------------------------------------------------------------

def _group(node, gid):
    group = node.groups.groups.get(gid)
    if group is None:
        raise Refused("unknown_group", f"no such group {gid!r}")
    return group


@command("groups.list")
def groups_list(node, who):
    """Every group with its name and size."""
    return [{"group": g.gid, "name": g.name, "members": len(g.members), "admins": len(g.admins())}
            for g in sorted(node.groups.groups.values(), key=lambda g: g.gid)]


@command("groups.show", group=(True, str))
def groups_show(node, who, group):
    """One group's members and admins."""
    g = _group(node, group)
    return {"group": g.gid, "name": g.name,
            "members": [{"user": u, "admin": a} for u, a in g.members.items()]}


@command("groups.delete", changes=True, group=(True, str))
def groups_delete(node, who, group):
    """Dissolve a group: its members get a ``dissolved`` group event."""
    members = len(_group(node, group).members)
    try:
        node.groups.dissolve(group, "operator")
    except ProtocolError as exc:
        raise Refused(exc.code, exc.message) from None
    return {"group": group, "members_told": members}


# --- invites -------------------------------------------------------------------------------

@command("invites.create", changes=True, uses=(False, int), days=(False, float))
def invites_create(node, who, uses=1, days=None):
    """An invite token good for ``uses`` registrations within ``days``."""
    try:
        return {**node.registration.create(uses, days, by=who), "mode": node.registration.mode}
    except ValueError as exc:
        raise Refused("bad_args", str(exc)) from None


@command("invites.list")
def invites_list(node, who):
    """Every invite, with its uses and expiry."""
    return node.registration.list()


@command("invites.revoke", changes=True, token=(True, str))
def invites_revoke(node, who, token):
    """Forget an invite."""
    if not node.registration.revoke(token):
        raise Refused("unknown_invite", "no such invite")
    return {"revoked": True}


# --- the node ------------------------------------------------------------------------------

@command("stats", interval=(False, float), all_nodes=(False, bool))
def stats(node, who, interval=1.0, all_nodes=False):
    """The operator shell's stats(): rates over ``interval`` s, queues, mailboxes, every metric;
    ``all_nodes``: every node's of the cluster and their totals."""
    return Helpers(node).stats(min(max(interval, 0.01), 60.0), node="all" if all_nodes else None)


@command("reload", changes=True, module=(True, str), all_nodes=(False, bool))
def reload(node, who, module, all_nodes=False):
    """Hot-load a module's new code into the node (the operator shell's reload()); ``all_nodes``:
    into every node of the cluster, one after the other, stopping at the first that fails."""
    try:
        report = Helpers(node).reload(module, nodes="all" if all_nodes else None)
    except Exception as exc:
        raise Refused("reload_failed", f"{type(exc).__name__}: {exc}") from None
    if not report:  # reload refused the module, or it did not load: the node keeps the old code
        raise Refused("reload_failed", repr(report))
    return report


@command("status")
def status(node, who):
    """Is the node healthy: tree up, listening, every store shard serving, not stopping."""
    checks = {"tree": node.root is not None and node.table.procs.get(node.root.n) is not None,
              "listening": node.server is not None and not node.server.closed,
              "offd_shards": all(s is not None for s in node.offd.spools),
              "account_shards": all(s.current is not None for s in node.accounts.industry.slots()),
              "stopping": node.stopping}
    healthy = all(v for k, v in checks.items() if k != "stopping") and not checks["stopping"]
    return {"healthy": healthy, "node": node.table.node, "node_id": node.node_id,
            "uptime": round(time.time() - node.started, 1) if node.started else 0.0,
            "listen": "%s:%d" % node.address[:2] if node.address else None,
            "online": len(node.sm), "users": len(node.accounts.users), "checks": checks}
