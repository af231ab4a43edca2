"""Presence, last seen and typing against a real whatsupd (docs/PROTOCOL.md, "Presence and typing")."""
import pytest

from social import quiet, take
from whatsup.client import ServerError


def _presence(client):
    return take(client, 1, ("presence",))[0]


def test_presence_changes_reach_subscribers_and_respect_the_privacy_setting(server):
    server.register("alice", "bob", "carol")
    alice, carol = server.client("alice"), server.client("carol")
    assert alice.subscribe("bob") == {"type": "presence", "ref": 3, "user": "bob", "online": False}
    carol.subscribe("bob")

    bob = server.client("bob")
    assert _presence(alice) == {"type": "presence", "user": "bob", "online": True}
    assert _presence(carol)["online"] is True
    bob.close()
    gone = _presence(alice)
    assert gone["online"] is False and gone["last_seen"] > 0
    assert _presence(carol)["last_seen"] == gone["last_seen"]

    bob = server.client("bob")
    bob.privacy("nobody")  # nobody sees bob's last seen any more: online itself still shows
    assert _presence(alice)["online"] is True
    bob.close()
    assert _presence(alice) == {"type": "presence", "user": "bob", "online": False}
    assert "last_seen" not in carol.subscribe("bob")
    alice.unsubscribe("bob")
    bob = server.client("bob")
    bob.privacy("everyone")
    assert _presence(carol)["online"] is True
    assert quiet(alice) == []  # unsubscribed
    server.restart()  # the privacy setting is durable, last seen is RAM only
    bob = server.client("bob")
    bob.privacy("nobody")
    server.restart()
    server.client("bob").close()
    assert "last_seen" not in server.client("alice").subscribe("bob")


def test_a_subscriber_that_reconnects_gets_the_current_state_on_resubscribing(server):
    server.register("alice", "bob")
    alice = server.client("alice")
    alice.subscribe("bob")
    alice.close()  # the subscription ends with the connection
    bob = server.client("bob")
    bob.close()
    alice = server.client("alice")
    assert quiet(alice) == []  # nothing was spooled meanwhile
    now = alice.subscribe("bob")
    assert now["online"] is False and now["last_seen"] > 0
    bob = server.client("bob")
    assert _presence(alice)["online"] is True


def test_typing_reaches_online_peers_and_group_members_and_is_never_spooled(server):
    server.register("alice", "bob", "carol", "dave")
    alice = server.client("alice")
    alice.typing(to="bob")  # bob is offline: dropped, not spooled
    bob = server.client("bob")
    assert bob.last_login["queued"] == 0 and quiet(bob) == []
    alice.typing(to="bob", state="recording")
    assert take(bob, 1, ("typing",)) == [{"type": "typing", "from": "alice", "state": "recording"}]

    gid = alice.group_create("typists", ["bob", "carol"])
    alice.typing(group=gid)
    assert take(bob, 1, ("typing",)) == [{"type": "typing", "from": "alice", "state": "typing",
                                          "group": gid}]
    carol = server.client("carol")  # was offline while alice typed
    assert [f["type"] for f in carol.drain(0.3)] == ["group_event"]


def test_bad_presence_and_typing_input_gets_its_error_code(make_server):
    server = make_server({"ratelimit.typing": 3.0, "session.rate_burst": 1.0})
    server.register("alice", "bob", "carol")
    alice, bob = server.client("alice"), server.client("bob")
    gid = bob.group_create("not yours", ["carol"])
    cases = [
        ({"type": "presence_sub", "user": "alice"}, "is_self"),
        ({"type": "presence_sub", "user": "nobody"}, "unknown_user"),
        ({"type": "typing", "to": "alice", "state": "typing"}, "is_self"),
        ({"type": "typing", "group": "g-nope", "state": "typing"}, "unknown_group"),
        ({"type": "typing", "group": gid, "state": "typing"}, "not_member"),
        ({"type": "typing", "to": "bob", "state": "shouting"}, "bad_field"),
        ({"type": "privacy", "last_seen": "friends"}, "bad_field"),
    ]
    for frame, code in cases:
        with pytest.raises(ServerError) as err:
            alice.request(frame)
        assert err.value.code == code

    alice = server.client("alice")  # a fresh session, a fresh limit
    for _ in range(20):  # a typing flood: the excess is refused, the connection stays
        alice.typing(to="bob")
    assert alice.ping()["type"] == "pong"
    refused = [f for f in alice.drain(0.3) if f["type"] == "error"]
    assert refused and {f["code"] for f in refused} == {"rate_limited"}
    relayed = [f for f in bob.drain(0.3) if f["type"] == "typing"]
    assert 1 <= len(relayed) <= 20 - len(refused)
    alice.send("bob", "still works")
