"""A read receipt names only messages the reader was delivered (docs/PROTOCOL.md, `not_delivered`):
nobody can tell a sender "read by" about a message they never got."""
import pytest

from whatsup.client import ServerError


def refused(client, to, ids, group=None):
    with pytest.raises(ServerError) as err:
        client.read(to, ids, group=group)
    return err.value.code


def receipts(client, status="read"):
    return [f["ids"] for f in client.drain(0.5) if f["type"] == "receipt" and f["status"] == status]


def test_a_read_is_refused_for_ids_never_sent_sent_to_someone_else_or_not_yet_acked(server):
    server.register("alice", "bob", "carol")
    with server.client("alice") as alice:
        alice.send("bob", "for bob", id="m1")
        alice.send("carol", "for carol", id="c1")
        with server.client("bob", auto_ack=False) as bob, server.client("carol") as carol:
            got = bob.recv(5)
            assert got["id"] == "m1"
            assert refused(bob, "alice", ["m1"]) == "not_delivered"  # sent to his device, not acked
            assert refused(bob, "alice", ["never-sent"]) == "not_delivered"
            assert refused(bob, "alice", ["c1"]) == "not_delivered"  # carol's message
            assert refused(bob, "alice", ["m1", "never-sent"]) == "not_delivered"  # all or nothing
            assert carol.recv(5)["id"] == "c1"
            bob.ack(got["seq"])
            assert bob.read("alice", ["m1"])["type"] == "ok"
            assert carol.read("alice", ["c1"])["type"] == "ok"
        assert sorted(receipts(alice)) == [["c1"], ["m1"]]


def test_a_group_read_is_refused_for_an_id_not_sent_to_that_group(server):
    server.register("alice", "bob", "carol")
    with server.client("alice") as alice, server.client("bob") as bob:
        gid = alice.group_create("pair", ["bob"])
        alice.send(None, "to the group", id="g1", group=gid)
        alice.send("carol", "one to one, to carol", id="d1")
        assert {f["id"] for f in bob.drain(1.0) if f["type"] == "msg"} == {"g1"}
        assert bob.read("alice", ["g1"], group=gid)["type"] == "ok"
        assert refused(bob, "alice", ["d1"], group=gid) == "not_delivered"
        assert refused(bob, "alice", ["nope"], group=gid) == "not_delivered"
