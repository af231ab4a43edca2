"""Deduplication of retransmitted messages must outlive compaction and a restart."""
from social import restart_after_compaction


def test_a_retransmission_after_compaction_and_a_restart_is_acked_but_not_delivered_twice(make_server):
    srv = make_server({"offd.shards": 1, "offd.segment_bytes": 4096, "offd.maintenance_interval": 0.1})
    srv.register("alice", "bob")
    with srv.client("alice") as alice:
        for n in range(40):
            alice.send("bob", "x" * 200, id=f"m{n}")
    with srv.client("bob") as bob:  # delivered and acked: only the ids' records keep m0 known
        assert len([f for f in bob.drain(1.0) if f["type"] == "msg"]) == 40
    restart_after_compaction(srv)
    with srv.client("alice") as alice:  # alice's phone missed the ✓ of m0 and sends it again
        assert alice.send("bob", "x" * 200, id="m0")["type"] == "sent"
    with srv.client("bob") as bob:
        assert [f["id"] for f in bob.drain(1.0) if f["type"] == "msg"] == []


def test_a_device_acks_but_does_not_show_again_a_message_it_showed_under_another_seq(server):
    """The device's half of "exactly once on screen" (docs/PROTOCOL.md): a message it has shown
    is recognised by (group, from, id), whatever its seq, acked, and not handed out again.

    A kill -9 before the fsync is what brings such a copy for real (tests/test_chaos.py); here
    the device forgets its last seq instead, so the server's resend is known only by its key."""
    server.register("alice", "bob")
    with server.client("alice") as alice:
        alice.send("bob", "once", id="k1")
    phone = server.client("bob", auto_ack=False)
    assert [f["id"] for f in phone.drain(0.5) if f["type"] == "msg"] == ["k1"]  # shown, never acked
    phone.sock.close()
    again = server.client("bob", last_seq=0, seen=phone.seen)
    assert [f for f in again.drain(0.5) if f["type"] == "msg"] == []  # recognised by its key...
    again.ping()  # the ack is in once the pong is back
    again.close()
    with server.client("bob") as fresh:  # ... and acked: nothing is left for the next device
        assert fresh.last_login["queued"] == 0
