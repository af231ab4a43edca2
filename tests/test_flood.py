"""Floods: per-connection token buckets per frame type, rate_limited, then flooding
(docs/PROTOCOL.md, "Limits")."""
from rawwire import RawConnection
from whatsup import protocol
from whatsup.client import ServerError


def read_codes(client, to, n, cid="m1"):
    """Send ``n`` read receipts of ``to``'s message ``cid`` one after the other; "ok" or the
    error code of each."""
    codes = []
    for _ in range(n):
        try:
            client.read(to, [cid])
            codes.append("ok")
        except ServerError as exc:
            codes.append(exc.code)
    return codes


def test_a_flooding_client_gets_rate_limited_then_is_closed_and_others_are_served(make_server):
    server = make_server({"ratelimit.msg": 1.0, "session.rate_burst": 3.0, "session.rate_strikes": 5})
    server.register("flood", "bob", "carol")
    with RawConnection(server) as flood:
        flood.login("flood")
        burst = b"".join(protocol.encode({"type": "msg", "ref": 100 + i, "id": f"f{i}", "to": "bob",
                                          "body": "spam"}) for i in range(200))
        try:  # far more than 3 + 5 within any plausible processing time, in one write
            flood.sock.sendall(burst)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed before it read everything: what it answered is still readable
        frames = flood.until_closed()
    sent = [f for f in frames if f["type"] == "sent"]
    errors = [f["code"] for f in frames if f["type"] == "error"]
    assert len(sent) < 20  # ✓s of accepted messages that were still in flight at the close are lost
    assert errors[-1] == "flooding" and set(errors[:-1]) == {"rate_limited"}
    assert all(f["ref"] >= 100 for f in frames if f["type"] == "error" and f["code"] == "rate_limited")

    bob, carol = server.client("bob"), server.client("carol")
    assert carol.send("bob", "hi bob")["type"] == "sent"
    got = [f for f in bob.drain(1.0) if f["type"] == "msg"]
    assert got[-1]["from"] == "carol"
    accepted = [f["id"] for f in got[:-1]]  # the burst of 3 (plus any refill), each exactly once
    assert 3 <= len(accepted) < 20 and len(set(accepted)) == len(accepted)
    assert {f["id"] for f in sent} <= set(accepted)
    bob.close(), carol.close()


def test_read_receipts_have_their_own_bucket(make_server):
    server = make_server({"ratelimit.read": 1.0, "session.rate_burst": 2.0, "ratelimit.msg": 0.0})
    server.register("alice", "bob")
    with server.client("alice") as alice:
        with server.client("bob") as bob:
            bob.send("alice", "one", id="m1")
        assert alice.recv(5)["id"] == "m1"  # delivered and acked: alice may say she read it
        codes = read_codes(alice, "bob", 4)
        assert codes[:2] == ["ok", "ok"] and "rate_limited" in codes[2:]
        assert alice.send("bob", "msgs are not limited here")["type"] == "sent"


def test_read_receipts_cannot_grow_an_offline_users_queue_beyond_max_queue(make_server):
    server = make_server({"offd.max_queue": 5, "ratelimit.read": 0.0})
    server.register("alice", "bob")
    with server.client("alice") as alice:
        with server.client("bob") as bob:
            bob.send("alice", "one", id="m1")
            assert alice.recv(5)["id"] == "m1"
            bob.drain(1.0)  # bob's ✓✓ receipt, acked: his queue is empty when he leaves
        codes = read_codes(alice, "bob", 8)
        assert codes == ["ok"] * 5 + ["queue_full"] * 3


def flood_of(server, frame, n):
    """``n`` copies of ``frame`` from a logged-in connection in one write; the frames answered."""
    with RawConnection(server) as flood:
        flood.login("flood")
        try:
            flood.sock.sendall(protocol.encode(frame) * n)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return flood.until_closed()


def test_a_ping_flood_is_rate_limited_then_closed_and_others_are_served(make_server):
    server = make_server({"ratelimit.ping": 1.0, "session.rate_burst": 3.0, "session.rate_strikes": 5})
    server.register("flood", "bob", "carol")
    frames = flood_of(server, {"type": "ping", "ref": 7}, 500)
    assert 3 <= sum(f["type"] == "pong" for f in frames) < 20
    errors = [f["code"] for f in frames if f["type"] == "error"]
    assert errors[-1] == "flooding" and set(errors[:-1]) == {"rate_limited"}
    with server.client("bob") as bob, server.client("carol") as carol:
        assert carol.send("bob", "still served")["type"] == "sent"
        assert bob.recv(5)["body"] == "still served"


def test_pings_before_login_are_rated_too(make_server):
    server = make_server({"ratelimit.ping": 1.0, "session.rate_burst": 2.0, "session.rate_strikes": 3})
    with RawConnection(server) as anon:
        anon.sock.sendall(protocol.encode({"type": "ping"}) * 100)
        frames = anon.until_closed()
    assert [f.get("code", f["type"]) for f in frames][-1] == "flooding"
    assert sum(f["type"] == "pong" for f in frames) < 10


def test_an_ack_flood_is_rate_limited_then_closed(make_server):
    server = make_server({"ratelimit.ack": 10.0, "session.rate_burst": 1.0, "session.rate_strikes": 5})
    server.register("flood")
    frames = flood_of(server, {"type": "ack", "seq": 1}, 5000)
    errors = [f["code"] for f in frames if f["type"] == "error"]
    assert errors[-1] == "flooding" and set(errors[:-1]) == {"rate_limited"}
    assert "Traceback" not in server.log()


def test_an_address_closed_for_flooding_too_often_gets_no_new_connection_for_a_while(make_server):
    server = make_server({"ratelimit.ping": 1.0, "session.rate_burst": 1.0, "session.rate_strikes": 2,
                          "server.flood_closes": 1})
    with RawConnection(server, source="127.0.0.5") as flood:
        flood.sock.sendall(protocol.encode({"type": "ping"}) * 50)
        assert flood.until_closed()[-1]["code"] == "flooding"
    with RawConnection(server, source="127.0.0.5") as again:
        again.send({"type": "ping", "ref": 1})
        assert again.until_closed()[-1]["code"] == "too_many_connections"
    with RawConnection(server, source="127.0.0.6") as other:  # another address of the network is served
        other.send({"type": "ping", "ref": 1})
        assert other.recv(10)["type"] == "pong"
