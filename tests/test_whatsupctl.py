"""whatsupctl run as a subprocess against a real node; every effect checked through a real client."""
import json
import os
import socket
import stat
import subprocess

import pytest

from whatsup.client import ServerError
from whatsup.testing import closed_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ctl(server):
    return Ctl(server)


class Ctl:
    """``whatsupctl --data-dir <the node's>``; ``json(...)`` parses the --json output."""

    def __init__(self, srv):
        self.srv = srv

    def __call__(self, *args, code=0, input=None):
        proc = subprocess.run([os.path.join(ROOT, "bin", "whatsupctl"), "--data-dir", self.srv.data_dir, *args],
                              capture_output=True, text=True, timeout=60, input=input)
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        return proc

    def json(self, *args, code=0):
        return json.loads(self(*args, "--json", code=code).stdout)


def test_users_register_list_show_and_sessions_list(ctl, server):
    assert ctl.json("users", "register", "alice", "--password", "pw-alice") == {"user": "alice"}
    ctl("users", "register", "bob", input="pw-bob\npw-bob\n")  # prompted for, twice
    assert "user_taken" in ctl("users", "register", "bob", "--password", "pw-bob2", code=1).stderr
    assert "bad_password" in ctl("users", "register", "carol", "--password", "short", code=1).stderr
    with server.client("bob") as bob:
        rows = ctl.json("users", "list")
        assert rows == [{"user": "alice", "online": False, "banned": False},
                        {"user": "bob", "online": True, "banned": False}]
        assert ctl.json("users", "list", "--online") == [rows[1]]
        table = ctl("users", "list").stdout.splitlines()
        assert table[0].split() == ["USER", "ONLINE", "BANNED"] and table[2].split() == ["bob", "True", "False"]
        [session] = ctl.json("sessions", "list")
        assert session["user"] == "bob" and session["node"] == "whatsup@localhost"
        assert session["addr"] == "%s:%d" % bob.sock.getsockname()[:2]
        assert "bob" in ctl("sessions", "list").stdout
        shown = ctl.json("users", "show", "bob")
        assert shown["session"]["pid"] == session["pid"] and shown["queued"] == 0 and shown["banned"] is None
        assert "scrypt_n:" in ctl("users", "show", "bob").stdout
    assert "unknown_user" in ctl("users", "show", "nobody", code=1).stderr


def test_a_banned_user_is_disconnected_and_cannot_log_in_until_unbanned(ctl, server):
    server.register("alice", "bob")
    with server.client("bob") as bob:
        ban = ctl.json("users", "ban", "bob", "--reason", "spam")
        assert ban["reason"] == "spam" and ban["by"].startswith(f"uid {os.getuid()}")
        assert closed_with(bob) == "banned"
    with server.client() as c, pytest.raises(ServerError) as refused:
        c.login("bob", "pw-bob")
    assert refused.value.code == "banned" and "spam" in refused.value.message
    assert ctl.json("users", "list")[1]["banned"] is True
    assert ctl.json("users", "unban", "bob") == {"user": "bob", "was_banned": True}
    with server.client("bob"):
        pass
    assert "admin users.ban by uid" in server.log()


def test_kick_and_set_password_close_the_session(ctl, server):
    server.register("bob")
    with server.client("bob") as bob:
        assert ctl.json("users", "kick", "bob")["sessions_closed"] == 1
        assert closed_with(bob) == "kicked"
    with server.client("bob") as bob:
        changed = ctl.json("users", "set-password", "bob", "--password", "new-password")
        assert changed == {"user": "bob", "sessions_closed": 1}
        assert closed_with(bob) == "password_changed"
    with server.client() as c, pytest.raises(ServerError, match="auth_failed"):
        c.login("bob", "pw-bob")
    with server.client("bob", "new-password"):
        pass
    assert "new-password" not in server.log()


def test_queue_show_and_purge_empty_the_queue(ctl, server):
    server.register("alice", "bob")
    with server.client("alice") as alice:
        for i in range(3):
            alice.send("bob", f"hello {i}", id=f"m{i}")
    shown = ctl.json("queue", "show", "bob")
    assert shown["count"] == 3 and shown["bytes"] > 0
    assert [(i["from"], i["id"], i["kind"]) for i in shown["items"]] == [("alice", f"m{i}", "msg") for i in range(3)]
    assert "3 items" in ctl("queue", "show", "bob").stdout
    ctl("queue", "purge", "bob", input="n\n", code=1)  # asks, and "no" keeps the queue
    assert ctl.json("queue", "show", "bob")["count"] == 3
    assert ctl.json("queue", "purge", "bob", "--yes") == {"user": "bob", "purged": 3, "bytes": shown["bytes"]}
    assert ctl.json("queue", "show", "bob")["count"] == 0
    with server.client("bob") as bob:
        assert bob.last_login["queued"] == 0 and bob.recv(0.5) is None
    server.restart()  # the purge is durable
    assert ctl.json("queue", "show", "bob")["count"] == 0


def test_an_unregistered_user_is_gone_everywhere(ctl, server):
    server.register("alice", "bob", "carol")
    with server.client("bob") as bob, server.client("alice") as alice:
        gid = alice.group_create("team", ["bob", "carol"])
        bob.block("carol")
        alice.send("bob", "for bob", id="x1")
        bob.drain(0.3)
        alice.send("bob", "queued for bob", id="x2")
        alice.drain(0.3)
        assert "Delete the account" in ctl("users", "unregister", "bob", input="n\n", code=1).stdout
        gone = ctl.json("users", "unregister", "bob", "--yes")
        assert (gone["user"], gone["sessions_closed"], gone["groups_left"]) == ("bob", 1, [gid])
        assert gone["items_purged"] >= 1  # x2, and the group event of bob leaving
        assert closed_with(bob) == "account_deleted"
        events = [f for f in alice.drain(0.5) if f["type"] == "group_event"]
        assert [(e["event"], e["by"]) for e in events] == [("left", "bob")]
    assert [u["user"] for u in ctl.json("users", "list")] == ["alice", "carol"]
    assert "unknown_user" in ctl("queue", "show", "bob", code=1).stderr
    assert [m["user"] for m in ctl.json("groups", "show", gid)["members"]] == ["alice", "carol"]
    with server.client() as c:
        with pytest.raises(ServerError, match="auth_failed"):
            c.login("bob", "pw-bob")
        with pytest.raises(ServerError, match="user_taken"):  # the name is retired
            c.register("bob", "pw-bob")
    with server.client("carol") as carol, pytest.raises(ServerError, match="unknown_user"):
        carol.send("bob", "hi")
    server.restart()
    assert "unknown_user" in ctl("users", "show", "bob", code=1).stderr


def test_groups_invites_stats_reload_and_status(ctl, server):
    server.register("alice", "bob")
    with server.client("alice") as alice, server.client("bob") as bob:
        gid = alice.group_create("team", ["bob"])
        assert ctl.json("groups", "list") == [{"group": gid, "name": "team", "members": 2, "admins": 1}]
        assert "team" in ctl("groups", "list").stdout and "bob" in ctl("groups", "show", gid).stdout
        assert ctl.json("groups", "delete", gid, "--yes") == {"group": gid, "members_told": 2}
        assert [e["event"] for e in bob.drain(0.5) if e["type"] == "group_event"] == ["created", "dissolved"]
        assert ctl.json("groups", "list") == []
        assert "unknown_group" in ctl("groups", "show", gid, code=1).stderr
    invite = ctl.json("invites", "create", "--uses", "3", "--days", "2")
    assert invite["uses"] == 3 and invite["used"] == 0
    assert [i["token"] for i in ctl.json("invites", "list")] == [invite["token"]]
    assert invite["token"] in ctl("invites", "list").stdout
    assert ctl.json("invites", "revoke", invite["token"]) == {"revoked": True}
    assert "unknown_invite" in ctl("invites", "revoke", invite["token"], code=1).stderr
    stats = ctl.json("stats", "--interval", "0.1")
    assert stats["metrics"]["users"] == 2 and stats["node"] == "whatsup@localhost"
    assert ctl.json("reload", "whatsup.social.presence")["module"] == "whatsup.social.presence"
    assert "reload_failed" in ctl("reload", "whatsup.nonexistent", code=1).stderr
    status = ctl.json("status")
    assert status["healthy"] is True and status["listen"] == server.server
    assert ctl("status").stdout.startswith("healthy:")


def test_the_control_socket_is_private_checked_and_speaks_json_lines(server):
    path = os.path.join(server.data_dir, "control.sock")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        f = s.makefile("rwb")
        for request, code in ((b"not json", "bad_request"), (b'{"cmd": "eval", "args": {}}', "unknown_command"),
                              (b'{"cmd": "users.show", "args": {"user": 3}}', "bad_args"),
                              (b'{"cmd": "users.show", "args": {"who": "x"}}', "bad_args")):
            f.write(request + b"\n")
            f.flush()
            answer = json.loads(f.readline())
            assert (answer["ok"], answer["error"]) == (False, code)
        f.write(b'{"id": 7, "cmd": "users.list"}\n')
        f.flush()
        assert json.loads(f.readline()) == {"id": 7, "ok": True, "result": []}
    with server.shell() as shell:
        out, ok = shell.run("ps('control')")
        assert ok and "control" in out
    assert server.stop() == 0
    assert not os.path.exists(path)


def test_every_command_is_documented():
    from whatsup.ctl.commands import COMMANDS
    with open(os.path.join(ROOT, "docs", "ADMIN.md")) as f:
        doc = f.read()
    for name in COMMANDS:
        assert f"| `{name}` |" in doc, f"{name} is not in docs/ADMIN.md"


def test_devices_list_and_unlink(ctl, server):
    server.register("bob")
    with server.client("bob") as phone, server.client() as new:
        device, token = new.link("bob", phone.link_code(), "laptop")
        listed = ctl.json("devices", "list", "bob")
        assert [(d["device"], d["name"], d["online"]) for d in listed] == [(0, "primary", True), (device, "laptop", False)]
        assert ctl.json("devices", "unlink", "bob", str(device))["unlinked"] is True
        assert "unknown_device" in ctl("devices", "unlink", "bob", str(device), code=1).stderr
        assert "primary_device" in ctl("devices", "unlink", "bob", "0", code=1).stderr
        assert [d["device"] for d in phone.devices()] == [0]
