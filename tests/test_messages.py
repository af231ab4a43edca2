"""1:1 messages and their ticks against a real whatsupd (docs/PROTOCOL.md, "Messages and ticks")."""
import os
import socket
import time

import pytest

from whatsup import protocol
from whatsup.client import Closed, ServerError


def msgs(frames):
    return [f for f in frames if f["type"] == "msg"]


def spool_bytes(server):
    root = os.path.join(server.data_dir, "offd")
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root)
               for f in fs if f.endswith(".log"))


def test_an_offline_recipient_gets_its_spool_in_order_and_only_once(make_server):
    server = make_server({"offd.segment_bytes": 4096, "offd.maintenance_interval": 0.2})
    server.register("alice", "bob")
    with server.client("alice") as alice:
        ids = [alice.send("bob", f"message {i}")["id"] for i in range(300)]
    grown = spool_bytes(server)
    with server.client("bob") as bob:
        assert bob.last_login["queued"] == 300
        got = msgs(bob.drain(1.0))
        assert [m["id"] for m in got] == ids
        assert [m["body"] for m in got] == [f"message {i}" for i in range(300)]
        assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
        bob.ping()
    with server.client("bob") as bob:
        assert bob.last_login["queued"] == 0
        assert msgs(bob.drain(0.5)) == []
    deadline = time.monotonic() + 10
    while spool_bytes(server) >= grown / 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # what stays: alice's one ✓✓ receipt for 300 ids, and the 300 ids compaction carries so
    # that a retransmission after a restart is still recognised (docs/RELIABILITY.md)
    assert spool_bytes(server) < grown / 2, "compaction did not shrink the spool"


def test_receipts_for_an_offline_sender_wait_for_its_next_login(server):
    server.register("alice", "bob")
    with server.client("alice") as alice:
        alice.send("bob", "hi", id="m1")
    with server.client("bob") as bob:
        assert msgs(bob.drain(0.5))[0]["id"] == "m1"
        bob.read("alice", ["m1"])
    with server.client("alice") as alice:
        receipts = [(f["status"], f["ids"], f["from"]) for f in alice.drain(0.5)]
    assert receipts == [("delivered", ["m1"], "bob"), ("read", ["m1"], "bob")]


def test_a_retransmitted_id_is_acked_again_but_delivered_once(server):
    server.register("alice", "bob")
    with server.client("alice") as alice:
        first = alice.send("bob", "once", id="dup-1")
        again = alice.send("bob", "once", id="dup-1")
        assert (again["id"], again["ts"]) == (first["id"], first["ts"])
    with server.client("bob") as bob:
        assert [m["id"] for m in msgs(bob.drain(0.5))] == ["dup-1"]


def test_the_sender_is_the_logged_in_user_whatever_the_frame_claims(server):
    server.register("alice", "bob", "mallory")
    with server.client("mallory") as mallory:
        mallory.request({"type": "msg", "id": "x1", "to": "bob", "body": "from alice, honest", "from": "alice"})
    with server.client("bob") as bob:
        assert [m["from"] for m in msgs(bob.drain(0.5))] == ["mallory"]


def test_a_second_login_replaces_the_first_and_unacked_items_move_over(server):
    server.register("alice", "bob")
    first = server.client("bob", auto_ack=False)
    with server.client("alice") as alice:
        alice.send("bob", "are you there?", id="q1")
    assert msgs([first.recv(5)])[0]["id"] == "q1"     # received, never acked
    second = server.client("bob")
    frames = []
    deadline = time.monotonic() + 10
    with pytest.raises(Closed):
        while time.monotonic() < deadline:  # bounded: a first session never closed fails, not hangs
            frames.append(first.recv(1))
    assert [f["code"] for f in frames if f and f["type"] == "error"] == [protocol.Code.REPLACED]
    assert [m["id"] for m in msgs(second.drain(0.5))] == ["q1"]
    second.close()


def test_a_half_open_connection_loses_nothing(make_server):
    server = make_server({"protocol.idle_timeout": 1.0})
    server.register("alice", "bob")
    phone = server.client("bob", auto_ack=False)
    with server.client("alice") as alice:
        for i in range(5):
            alice.send("bob", f"m{i}", id=f"h{i}")
    assert len(msgs(phone.drain(0.5))) == 5               # on the wire, never acked
    # The phone loses its network: it neither reads, acks nor closes. The server's
    # idle timeout notices; everything arrives at the next login.
    deadline = time.monotonic() + 10
    while "idle_timeout" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "idle_timeout" in server.log()
    with server.client("bob") as bob:
        assert [m["id"] for m in msgs(bob.drain(0.5))] == [f"h{i}" for i in range(5)]
    phone.sock.close()


def test_a_new_connection_must_log_in_in_time(make_server):
    server = make_server({"protocol.login_timeout": 1.0})
    sock = socket.create_connection(server.address)
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    frames = protocol.FrameDecoder(65536).feed(data)
    assert frames[-1]["code"] == protocol.Code.IDLE_TIMEOUT
    sock.close()


def test_a_full_queue_is_reported_to_the_sender(make_server):
    server = make_server({"offd.max_queue": 3})
    server.register("alice", "bob")
    with server.client("alice") as alice:
        for i in range(3):
            alice.send("bob", f"m{i}")
        with pytest.raises(ServerError) as e:
            alice.send("bob", "one too many")
        assert e.value.code == protocol.Code.QUEUE_FULL
    assert "queue of bob is full" in server.log()


@pytest.mark.parametrize("body, code", [("", "empty_body"), ("x" * 61441, "body_too_large")])
def test_bad_bodies_are_refused_and_the_session_goes_on(server, body, code):
    server.register("alice", "bob")
    with server.client("alice") as alice:
        with pytest.raises(ServerError) as e:  # a raw request: Client.send refuses it first
            alice.request({"type": "msg", "id": "bad", "to": "bob", "body": body})
        assert e.value.code == code
        assert alice.send("bob", "fine")["type"] == "sent"


def test_account_errors(server):
    server.register("alice")
    with server.client() as c:
        for call, code in [(lambda: c.register("alice", "another1"), "user_taken"),
                           (lambda: c.register("no spaces", "secret1"), "bad_username"),
                           (lambda: c.register("carol", "short"), "bad_password"),
                           (lambda: c.login("alice", "wrong-password"), "auth_failed"),
                           (lambda: c.login("nobody", "whatever"), "auth_failed"),
                           (lambda: c.send("alice", "hi"), "not_logged_in")]:
            with pytest.raises(ServerError) as e:
                call()
            assert e.value.code == code
        c.login("alice", "pw-alice")
        with pytest.raises(ServerError) as e:
            c.send("nobody", "hi")
        assert e.value.code == "unknown_user"
