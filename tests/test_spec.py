"""docs/PROTOCOL.md holds no holes: its numbers are the settings' defaults, it lists every error
code of every frame, and the server does what it says for names, passwords, ``register``,
``queued``, messages to yourself and errors that come without ``ref``."""
import os
import re

import pytest

from whatsup import config, protocol
from whatsup.client import ServerError
from whatsup.protocol import Code
from whatsup.testing import exchange

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODES = {v for k, v in vars(Code).items() if k.isupper()}


@pytest.fixture(scope="module")
def doc():
    with open(os.path.join(ROOT, "docs", "PROTOCOL.md")) as f:
        return f.read()


def test_every_default_the_spec_quotes_is_the_settings_default(doc):
    quoted = re.findall(r"`([a-z_]+\.[a-z_]+)`[^`\n]{0,40}?default (\d[\d.]*)", doc.replace("\n", " "))
    assert len(quoted) >= 12
    for name, number in quoted:
        assert name in config.BY_NAME, f"the spec names an unknown setting {name}"
        assert float(number) == config.BY_NAME[name].default, f"{name}: the spec says {number}"


def test_every_frame_has_a_row_of_error_codes_and_every_code_is_in_one(doc):
    section = doc[doc.index("### Errors by frame"):doc.index("## A worked example")]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", section, re.M))
    assert set(rows) == set(protocol.SCHEMAS)
    named = set(re.findall(r"`(\w+)`", section)) - set(protocol.SCHEMAS) - {"ref", "group", "ratelimit"}
    assert named <= CODES, named - CODES
    without_ref = doc[doc.index("### Errors without `ref`"):doc.index("### Errors by frame")]
    closing = set(re.findall(r"`(\w+)`", without_ref)) & CODES
    assert protocol.CLOSING <= closing | {"bad_frame", "frame_too_large", "unsupported_version"}
    assert CODES <= named | closing


@pytest.mark.parametrize("user, password, code", [
    ("", "longenough", "bad_username"), ("a" * 33, "longenough", "bad_username"),
    ("a" * 65, "longenough", "bad_username"), ("no spaces", "longenough", "bad_username"),
    ("carol", "p" * 257, "bad_password"), ("carol", "short", "bad_password")])
def test_register_refuses_names_and_passwords_outside_the_rules_with_their_codes(server, user, password, code):
    with server.client() as c, pytest.raises(ServerError) as refused:
        c.register(user, password)
    assert refused.value.code == code and "ref" in refused.value.frame


def test_the_length_rules_are_the_settings_and_login_refuses_what_register_would(make_server):
    srv = make_server({"accounts.max_username": 8, "accounts.min_password": 8, "accounts.max_password": 10})
    with srv.client() as c:
        c.register("a" * 8, "p" * 10)
        for user, password, code in (("a" * 9, "p" * 10, "bad_username"), ("b", "p" * 7, "bad_password"),
                                     ("b", "p" * 11, "bad_password")):
            with pytest.raises(ServerError, match=code):
                c.register(user, password)
        for user, password in (("a" * 8, "p" * 11), ("", "p" * 10), ("a" * 9, "p" * 10)):
            with pytest.raises(ServerError, match="auth_failed"):
                c.login(user, password)
        assert c.login("a" * 8, "p" * 10)["user"] == "a" * 8


def test_register_does_not_log_in(server):
    with server.client() as c:
        c.register("alice", "pw-alice")
        with pytest.raises(ServerError, match="not_logged_in"):
            c.send("alice", "hi")
        c.register("bob", "pw-bob")  # another account on the same connection
        assert c.login("alice", "pw-alice")["queued"] == 0


def test_messaging_yourself_gets_the_message_and_all_three_ticks(server):
    server.register("alice")
    with server.client("alice") as alice:
        sent = alice.send("alice", "note to self", id="self-1")
        assert sent["type"] == "sent"
        got = alice.recv(5)
        assert (got["type"], got["from"], got["body"]) == ("msg", "alice", "note to self")
        alice.read("alice", ["self-1"])
        receipts = [(f["status"], f["ids"]) for f in alice.drain(1.0) if f["type"] == "receipt"]
        assert receipts == [("delivered", ["self-1"]), ("read", ["self-1"])]


def test_queued_counts_receipts_and_group_events_too(server):
    server.register("alice", "bob")
    with server.client("alice") as alice:
        group = alice.group_create("climbing", ["bob"])
        alice.send("bob", "hi", id="q-1")
        alice.drain(0.3)  # her own "created" event, acked
    with server.client("bob") as bob:
        assert bob.last_login["queued"] == 2  # the group event and the message
        assert [f["type"] for f in bob.drain(0.5)] == ["group_event", "msg"]
        bob.ping()  # the acks are in
    with server.client("alice") as alice:
        assert alice.last_login["queued"] == 1  # bob's ✓✓ receipt
        assert alice.recv(5)["status"] == "delivered"
    assert group.startswith("g")


def test_the_errors_without_ref_are_the_documented_ones(server):
    server.register("alice")
    hello = protocol.encode({"type": "hello", "ref": 1, "versions": [1]})
    frames = [{"type": "ack", "seq": 1}, {"type": "msg", "ref": "x", "id": "a", "to": "alice", "body": "b"},
              {"type": "login", "ref": 2, "user": "alice", "password": "pw-alice"},
              {"type": "typing", "to": "nobody", "state": "typing"}, {"type": "ack", "seq": "1"},
              {"type": "ping", "ref": 3}]
    got = exchange(server.server, hello + b"".join(map(protocol.encode, frames)), expect=6)
    assert [(f["type"], f.get("code"), f.get("ref")) for f in got] == [
        ("hello", None, 1), ("error", "not_logged_in", None), ("error", "bad_field", None),
        ("ok", None, 2), ("error", "unknown_user", None), ("error", "bad_field", None), ("pong", None, 3)]
