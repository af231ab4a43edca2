"""Registration modes, invites, password change, account deletion and rehash, over the protocol."""
import os
import subprocess

import pytest

from whatsup.client import ServerError
from whatsup.protocol import Code, ProtocolError
from whatsup.users.registration import Registration
from whatsup.testing import closed_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MemoryTable:
    """The whatsup.store.tables.Table contract in RAM, durable at once: for the I/O-free core."""

    def __init__(self):
        self.rows = {}

    def load(self):
        return dict(self.rows)

    def put(self, key, value, on_durable=None):
        if value is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = value
        if on_durable is not None:
            on_durable(None)


def _admit(reg, user, token=None):
    with reg.admit(user, token):
        pass


def _refused(reg, user, token=None):
    with pytest.raises(ProtocolError) as refused:
        _admit(reg, user, token)
    return refused.value.code


def test_invites_are_used_up_expire_and_give_back_a_failed_registration():
    now = [1000.0]
    table = MemoryTable()
    reg = Registration("invite", 7.0, lambda user: user == "retired", clock=lambda: now[0]).open(table)
    assert _refused(reg, "a") == Code.INVITE_REQUIRED
    assert _refused(reg, "a", "no-such-token") == Code.BAD_INVITE
    two = reg.create(uses=2, days=1.0)["token"]
    with pytest.raises(RuntimeError), reg.admit("a", two):
        raise RuntimeError("the account store failed")  # the use is given back
    _admit(reg, "a", two)
    _admit(reg, "b", two)
    assert _refused(reg, "c", two) == Code.BAD_INVITE  # used up
    assert table.rows[two]["used"] == 2
    later = reg.create()["token"]
    assert _refused(reg, "retired", later) == Code.USER_TAKEN
    now[0] += 7 * 86400.0
    assert _refused(reg, "c", later) == Code.BAD_INVITE  # expired
    assert [i["valid"] for i in reg.list()] == [False, False]
    assert Registration("invite", 7.0, lambda u: False).open(table).invites == table.rows  # reloaded


def test_no_invite_token_can_be_read_as_a_command_line_option():
    reg = Registration("invite", 7.0, lambda user: False).open(MemoryTable())
    tokens = [reg.create()["token"] for _ in range(512)]  # token_urlsafe: ~8 of 512 began with "-"
    assert not [t for t in tokens if t.startswith("-")] and len(set(tokens)) == 512


def test_open_and_closed_modes():
    reg = Registration("open", 7.0, lambda user: False).open(MemoryTable())
    _admit(reg, "a")
    _admit(reg, "b", "any-token-is-ignored")
    closed = Registration("closed", 7.0, lambda user: False).open(MemoryTable())
    assert _refused(closed, "a") == Code.REGISTRATION_CLOSED
    with pytest.raises(ValueError):
        Registration("maybe", 7.0, lambda user: False)


def _ctl(srv, *args):
    out = subprocess.run([os.path.join(ROOT, "bin", "whatsupctl"), "--data-dir", srv.data_dir, *args],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def _register_code(srv, user, invite=None):
    with srv.client() as c:
        try:
            c.register(user, f"pw-{user}", invite=invite)
        except ServerError as exc:
            return exc.code
    return "ok"


def test_registration_modes_on_a_node(make_server):
    closed = make_server({"accounts.registration": "closed"}, name="closed")
    assert _register_code(closed, "alice") == Code.REGISTRATION_CLOSED
    _ctl(closed, "users", "register", "alice", "--password", "pw-alice")  # the operator still can
    with closed.client("alice"):
        pass
    invite = make_server({"accounts.registration": "invite"}, name="invite")
    assert _register_code(invite, "bob") == Code.INVITE_REQUIRED
    token = _ctl(invite, "invites", "create", "--uses", "1")
    assert _register_code(invite, "bob", "wrong") == Code.BAD_INVITE
    assert _register_code(invite, "bob", token) == "ok"
    assert _register_code(invite, "carol", token) == Code.BAD_INVITE  # single use
    invite.restart()
    assert _register_code(invite, "carol", token) == Code.BAD_INVITE  # still used after a restart
    assert _register_code(make_server(name="open"), "dave") == "ok"


def test_password_change_needs_the_old_password(server):
    server.register("alice")
    with server.client("alice") as alice:
        with pytest.raises(ServerError, match="auth_failed"):
            alice.passwd("wrong-old", "new-password")
        with pytest.raises(ServerError, match="bad_password"):
            alice.passwd("pw-alice", "short")
        assert alice.passwd("pw-alice", "new-password")["type"] == "ok"
        alice.ping()  # the device that asked stays logged in
    with server.client() as c, pytest.raises(ServerError, match="auth_failed"):
        c.login("alice", "pw-alice")
    with server.client("alice", "new-password"):
        pass


def test_deleting_an_account_removes_it_and_retires_the_name(make_server):
    srv = make_server({"accounts.name_reuse_days": 0.0})
    srv.register("alice", "bob", "carol")
    with srv.client("alice") as alice, srv.client("carol") as carol:
        gid = alice.group_create("team", ["carol"])
        alice.block("bob")
        carol.send("alice", "queued?")
        alice.drain(0.3)  # acked before the close, so the server has nothing unread
        with pytest.raises(ServerError, match="auth_failed"):
            alice.delete_account("wrong")
        assert alice.delete_account("pw-alice")["type"] == "ok"
        assert closed_with(alice) == Code.ACCOUNT_DELETED
        events = [f for f in carol.drain(0.5) if f["type"] == "group_event"]
        assert [(e["event"], e["by"], e.get("heir")) for e in events] == [("created", "alice", None),
                                                                          ("left", "alice", "carol")]
        assert carol.group_info(gid)["members"] == ["carol"]
        with pytest.raises(ServerError, match="unknown_user"):
            carol.send("alice", "hello?")
    with srv.client() as c, pytest.raises(ServerError, match="auth_failed"):
        c.login("alice", "pw-alice")
    assert _register_code(srv, "alice") == "ok"  # name_reuse_days = 0: free at once
    with srv.client("alice") as alice:
        assert alice.last_login["queued"] == 0 and alice.blocked() == []


def test_deleted_account_closes_with_account_deleted(server):
    server.register("alice")
    with server.client("alice") as alice:
        alice.delete_account("pw-alice")
        assert closed_with(alice) == Code.ACCOUNT_DELETED
    assert _register_code(server, "alice") == Code.USER_TAKEN  # retired for name_reuse_days


def test_login_rehashes_a_password_made_with_another_scrypt_cost(make_server):
    srv = make_server({"accounts.scrypt_n": 1024})
    srv.register("alice", "bob")
    assert '"scrypt_n": 1024' in _ctl(srv, "--json", "users", "show", "alice")
    srv.stop()
    srv.settings["accounts.scrypt_n"] = 2048
    srv.start()
    with srv.client("alice"):
        pass
    assert '"scrypt_n": 2048' in _ctl(srv, "--json", "users", "show", "alice")
    assert '"scrypt_n": 1024' in _ctl(srv, "--json", "users", "show", "bob")  # not logged in yet
    with srv.client("alice"):
        pass


def test_users_make_single_use_invites_within_their_quota(make_server):
    srv = make_server({"accounts.registration": "invite", "accounts.user_invites": 1})
    _ctl(srv, "users", "register", "alice", "--password", "pw-alice")
    with srv.client("alice") as alice:
        invite = alice.request({"type": "invite_create"})
        assert invite["type"] == "ok" and invite["expires"] > 0
        with pytest.raises(ServerError, match="invite_limit"):  # she holds one valid invite
            alice.request({"type": "invite_create"})
        assert _register_code(srv, "bob", invite["token"]) == "ok"
        assert _register_code(srv, "carol", invite["token"]) == Code.BAD_INVITE  # single use
        assert alice.request({"type": "invite_create"})["token"] != invite["token"]  # used: room again
    srv.settings["accounts.user_invites"] = 0  # only the operator makes invites
    srv.restart()
    with srv.client("bob") as bob, pytest.raises(ServerError, match="invite_limit"):
        bob.request({"type": "invite_create"})


def test_wrong_passwords_in_passwd_and_delete_account_count_as_failed_logins(make_server):
    """A stolen session guesses no faster than a stranger: past auth.user_failures wrong
    passwords, passwd and delete_account answer too_many_attempts without hashing, and so does
    login for that name."""
    server = make_server({"auth.user_failures": 3})
    server.register("alice")
    with server.client("alice") as alice:
        codes = []
        for attempt in (lambda: alice.passwd("wrong-1", "new-password"),
                        lambda: alice.delete_account("wrong-2"),
                        lambda: alice.passwd("wrong-3", "new-password"),
                        lambda: alice.passwd("pw-alice", "new-password")):  # even the right one, now
            with pytest.raises(ServerError) as err:
                attempt()
            codes.append(err.value.code)
        assert codes == ["auth_failed"] * 3 + ["too_many_attempts"]
    with server.client() as c, pytest.raises(ServerError, match="too_many_attempts"):
        c.login("alice", "pw-alice")
