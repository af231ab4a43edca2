"""Floods: per-connection token buckets per frame type, rate_limited, then flooding
(docs/PROTOCOL.md, "Limits"), through the socket adapter; the rules of each bucket and of
strikes are unit tests of the connection core (tests/test_c2s.py)."""
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
