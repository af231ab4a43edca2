"""Auth hardening: failed logins are limited per user and per address, and a session acts only
as its own user (docs/PROTOCOL.md, "Limits" and "Identity")."""
import pytest

from rawwire import RawConnection
from whatsup.client import ServerError


def login_code(client, user, password):
    try:
        client.login(user, password)
        return "ok"
    except ServerError as exc:
        return exc.code


def test_failed_logins_lock_the_address_but_not_other_addresses(make_server):
    server = make_server({"auth.ip_failures": 3, "auth.user_failures": 100})
    server.register("ann", "ben", "cat", "dan")
    with server.client() as c:
        codes = [login_code(c, user, "wrong-guess") for user in ("ann", "ben", "cat")]
        codes.append(login_code(c, "dan", "pw-dan"))
        assert codes == ["auth_failed"] * 3 + ["too_many_attempts"]
    with RawConnection(server, source="127.0.0.2") as elsewhere:
        assert elsewhere.login("dan")["type"] == "ok"


def test_a_session_cannot_claim_another_sender(server):
    server.register("alice", "bob", "carol")
    with RawConnection(server) as alice:
        alice.login("alice")
        answer = alice.request({"type": "msg", "id": "m1", "to": "bob", "body": "hi",
                                "from": "carol", "user": "carol"}, 10)
        assert answer["type"] == "sent"
    with server.client("bob") as bob:
        msg = bob.recv(10)
        assert (msg["from"], msg["body"]) == ("alice", "hi")


def test_a_session_only_ever_receives_and_acks_its_own_queue(server):
    server.register("alice", "bob", "carol")
    with server.client("carol") as carol:
        for i in range(5):
            carol.send("bob", f"for bob {i}", id=f"b{i}")
            carol.send("alice", f"for alice {i}", id=f"a{i}")
    with server.client("alice") as alice:
        alice.send_frame({"type": "ack", "seq": 2 ** 62})  # acks alice's items only
        got = [f for f in alice.drain(1.0) if f["type"] == "msg"]
        assert [f["id"] for f in got] == [f"a{i}" for i in range(5)]
        with pytest.raises(ServerError) as refused:
            alice.login("bob", "pw-bob")
        assert refused.value.code == "already_logged_in"
    with server.client("bob") as bob:
        assert bob.last_login["queued"] == 5
        got = [f for f in bob.drain(1.0) if f["type"] == "msg"]
        assert [f["id"] for f in got] == [f"b{i}" for i in range(5)]


def test_parallel_guesses_from_many_connections_get_no_more_than_the_limit(make_server):
    server = make_server({"auth.user_failures": 3})
    server.register("victim")
    conns = [RawConnection(server) for _ in range(10)]
    for conn in conns:
        conn.hello()
    for conn in conns:  # all ten in flight before any hash is done
        conn.send({"type": "login", "ref": 5, "user": "victim", "password": "wrong-guess"})
    codes = sorted(conn.recv(30)["code"] for conn in conns)
    assert codes == ["auth_failed"] * 3 + ["too_many_attempts"] * 7
    for conn in conns:
        conn.sock.close()
