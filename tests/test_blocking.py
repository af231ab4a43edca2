"""Blocking against a real whatsupd (docs/PROTOCOL.md, "Blocking").

The blocked user learns nothing WhatsApp would not show: their messages get ✓
and stay there, the blocker looks offline with no last seen, typing vanishes.
The blocker, who knows, is refused with ``blocked``.
"""
import pytest

from social import quiet, take
from whatsup.client import ServerError


def _refused(call):
    with pytest.raises(ServerError) as err:
        call()
    return err.value.code


def test_blocking_works_both_ways_as_documented(server):
    server.register("bob", "troll", "carol")
    bob, troll = server.client("bob"), server.client("troll")
    troll.subscribe("bob")
    bob.block("troll")
    assert bob.blocked() == ["troll"]

    # the blocked user: a single ✓ forever, the blocker offline without last seen, typing dropped
    sent = troll.send("bob", "you there?", id="t1")
    assert sent["type"] == "sent" and sent["id"] == "t1"
    assert troll.subscribe("bob") == {"type": "presence", "ref": sent["ref"] + 1, "user": "bob",
                                      "online": False}
    troll.typing(to="bob")
    bob.close()
    bob = server.client("bob")  # bob goes offline and online again: troll hears nothing
    assert bob.last_login["queued"] == 0
    assert quiet(bob) == [] and quiet(troll) == []  # no message, no typing; no receipt, no presence

    # the blocker is told
    assert _refused(lambda: bob.send("troll", "go away")) == "blocked"
    assert _refused(lambda: bob.subscribe("troll")) == "blocked"
    assert _refused(lambda: bob.request({"type": "typing", "to": "troll", "state": "typing"})) == "blocked"

    # group messages still flow both ways, as at WhatsApp
    gid = server.client("carol").group_create("mixed", ["bob", "troll"])
    troll.send(None, "hi group", id="g1", group=gid)
    assert [f["id"] for f in take(bob, 2, ("msg", "group_event")) if f["type"] == "msg"] == ["g1"]

    # unblocking: later messages arrive, the one sent while blocked never does
    bob.unblock("troll")
    assert bob.blocked() == []
    troll.send("bob", "sorry", id="t2")
    assert [f["id"] for f in take(bob, 1, ("msg",))] == ["t2"]
    assert quiet(bob) == []


def test_blocks_survive_a_restart_and_bad_block_input_gets_its_code(server):
    server.register("bob", "troll")
    bob = server.client("bob")
    assert _refused(lambda: bob.block("bob")) == "is_self"
    assert _refused(lambda: bob.block("nobody")) == "unknown_user"
    bob.block("troll")
    server.restart()  # kill -9 after the ok: the block is durable
    bob = server.client("bob")
    assert bob.blocked() == ["troll"]
    server.client("troll").send("bob", "after the restart")
    assert quiet(bob) == []
