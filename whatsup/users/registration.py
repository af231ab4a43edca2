"""Who may register (docs/PROTOCOL.md, "Accounts"): ``accounts.registration`` is ``open``,
``invite`` or ``closed``.

* ``open``: anyone who reaches the port registers;
* ``invite``: ``register`` must carry an ``invite`` token made by the operator
  (``whatsupctl invites create``), good for ``uses`` registrations until it
  expires (``invite_required``, ``bad_invite``), or by a user (``invite_create``,
  single-use) who holds fewer than ``accounts.user_invites`` valid ones;
* ``closed``: only the operator registers users (``registration_closed``).

A retired name (a deleted account's, whatsup/users/lifecycle.py) is ``user_taken`` in
every mode. Invites are a small durable table held in RAM. A use is taken when
a registration is admitted and given back if the registration then fails, so
two registrations racing for the last use cannot both pass.
"""
import contextlib
import logging
import secrets
import time

from ..store.tables import Records
from ..protocol import Code, ProtocolError

log = logging.getLogger("whatsup.registration")
MODES = ("open", "invite", "closed")


class Registration:
    def __init__(self, mode, invite_days, retired, user_invites=0, clock=time.time):
        if mode not in MODES:
            raise ValueError(f"accounts.registration must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.invite_days = invite_days
        self.user_invites = user_invites  # valid invites one user may hold at once (0: none)
        self.retired = retired  # callable(user) -> True while the name may not be registered
        self.clock = clock
        self.invites = Records()  # token -> {"uses", "used", "expires", "by", "created"}

    def __repr__(self):
        return f"<Registration {self.mode} invites={len(self.invites)}>"

    def open(self, table):
        """Load the invites from ``table`` (a whatsup.store.tables.Table)."""
        self.invites.open(table)
        return self

    @contextlib.contextmanager
    def admit(self, user, token, ref=None):
        """Around a client's registration: raises ProtocolError when the mode refuses it; an
        invite's use is kept if the block succeeds and given back if it raises."""
        if self.mode == "closed":
            raise ProtocolError(Code.REGISTRATION_CLOSED, "registration is closed on this server", ref)
        if self.retired(user):
            raise ProtocolError(Code.USER_TAKEN, f"{user!r} is taken", ref)
        if self.mode == "open":
            yield
            return
        if token is None:
            raise ProtocolError(Code.INVITE_REQUIRED, "this server registers with an invite only", ref)
        invite = self.invites.get(token)
        if invite is None or invite["used"] >= invite["uses"] or invite["expires"] <= self.clock():
            raise ProtocolError(Code.BAD_INVITE, "unknown, used up or expired invite", ref)
        invite["used"] += 1
        try:
            yield
        except BaseException:
            invite["used"] -= 1
            raise
        self.invites.save(token)
        log.info("%s registered with invite %s… (%d/%d used)", user, token[:6], invite["used"], invite["uses"])

    def invite_create(self, user, pid, f):
        """The ``invite_create`` frame: a single-use invite made by ``user``, within their quota."""
        now = self.clock()
        held = sum(1 for i in self.invites.values() if i["by"] == user and i["used"] < i["uses"] and i["expires"] > now)
        if held >= self.user_invites:
            raise ProtocolError(Code.INVITE_LIMIT, f"you may hold {self.user_invites} valid invites at once "
                                f"(accounts.user_invites)", f["ref"])
        invite = self.create(1, by=user)
        return {"type": "ok", "ref": f["ref"], "token": invite["token"], "expires": int(invite["expires"] * 1000)}

    # --- the operator's verbs ----------------------------------------------------------------

    def create(self, uses=1, days=None, by=None):
        """A new invite good for ``uses`` registrations within ``days`` (accounts.invite_days)."""
        if uses < 1:
            raise ValueError("an invite is good for one use at least")
        now = self.clock()
        token = secrets.token_hex(12)  # not token_urlsafe: one in 64 began with "-", an option to every CLI
        self.invites.store(token, {"uses": uses, "used": 0, "by": by, "created": round(now, 3),
                                   "expires": round(now + 86400.0 * (self.invite_days if days is None else days), 3)})
        return {"token": token, **self.invites[token]}

    def list(self):
        now = self.clock()
        return [{"token": t, **i, "valid": i["used"] < i["uses"] and i["expires"] > now}
                for t, i in sorted(self.invites.items(), key=lambda kv: kv[1]["created"])]

    def revoke(self, token):
        """Forget ``token``; False if there was no such invite."""
        if token not in self.invites:
            return False
        self.invites.store(token, None)
        return True
