"""Groups against a real whatsupd (docs/PROTOCOL.md, "Groups")."""
import collections
import os
import subprocess
import sys

import pytest

from social import quiet, register_many, take
from whatsup.client import ServerError
from whatsup.store.offd import record


def _ids(frames, kind="msg"):
    return [f["id"] for f in frames if f["type"] == kind]


def test_group_of_50_some_offline_each_gets_every_message_once_in_order_with_per_member_ticks(server):
    owner, *members = register_many(server, [f"mem{i:02d}" for i in range(50)])
    online = {m: server.client(m) for m in members[:25]}
    boss = server.client(owner)
    gid = boss.group_create("fifty", members)
    second = online[members[0]]

    mine = [boss.send_nowait(None, f"boss {i}", group=gid)["id"] for i in range(8)]
    theirs = [second.send_nowait(None, f"second {i}", group=gid)["id"] for i in range(4)]
    assert sorted(_ids(take(boss, 8, ("sent",)), "sent")) == sorted(mine)
    assert sorted(_ids(take(second, 4, ("sent",)), "sent")) == sorted(theirs)

    clients = dict(online)
    clients.update({m: server.client(m) for m in members[25:]})  # the offline ones come back
    for m, c in clients.items():
        expect = 1 + 8 + (4 if m != members[0] else 0)
        got = take(c, expect, ("msg", "group_event"))
        assert got[0]["event"] == "created" and got[0]["members"] == [owner] + members
        msgs = [f for f in got[1:] if f["type"] == "msg"]
        assert all(f["group"] == gid for f in msgs)
        assert [f["id"] for f in msgs if f["from"] == owner] == mine          # once, in order
        assert [f["id"] for f in msgs if f["from"] == members[0]] == (theirs if m != members[0] else [])
        if m in members[:3]:
            c.read(owner, mine, group=gid)

    # the owner: a ✓✓ per member and message, and a read receipt from each of the three readers
    ticks = {"delivered": set(), "read": set()}
    while len(ticks["delivered"]) < 49 * 8 or len(ticks["read"]) < 3 * 8:
        receipt = take(boss, 1, ("receipt",))[0]
        assert receipt["group"] == gid
        ticks[receipt["status"]] |= {(receipt["from"], mid) for mid in receipt["ids"]}
    assert ticks["delivered"] == {(m, mid) for m in members for mid in mine}
    assert ticks["read"] == {(m, mid) for m in members[:3] for mid in mine}
    for c in clients.values():
        c.close()


def test_membership_changes_are_ordered_with_the_messages(server):
    server.register("owner", "anna", "bert", "carl")
    owner, anna, bert, carl = (server.client(u) for u in ("owner", "anna", "bert", "carl"))
    gid = owner.group_create("club", ["anna", "bert"])
    owner.send(None, "m1", id="m1", group=gid)
    owner.group_remove(gid, ["bert"])
    owner.send(None, "m2", id="m2", group=gid)
    owner.group_add(gid, ["carl"])
    owner.group_admin(gid, "anna")
    owner.group_rename(gid, "the club")
    owner.send(None, "m3", id="m3", group=gid)
    owner.group_leave(gid)
    anna.send(None, "m4", id="m4", group=gid)

    def story(frames):
        return [f["id"] if f["type"] == "msg" else f["event"] for f in frames]
    assert story(take(anna, 9, ("msg", "group_event"))) == [
        "created", "m1", "removed", "m2", "added", "admin", "renamed", "m3", "left"]
    assert story(take(bert, 3, ("msg", "group_event"))) == ["created", "m1", "removed"]
    assert story(take(carl, 6, ("msg", "group_event"))) == ["added", "admin", "renamed", "m3", "left", "m4"]
    info = carl.group_info(gid)
    assert (info["name"], info["members"], info["admins"]) == ("the club", ["anna", "carl"], ["anna"])
    assert [g["group"] for g in carl.group_list()] == [gid]
    assert bert.group_list() == [] and owner.group_list() == []
    with pytest.raises(ServerError) as err:
        bert.send(None, "let me in", group=gid)
    assert err.value.code == "not_member"
    assert [f for f in bert.drain(0.3) if f["type"] == "msg"] == []


def test_bad_group_input_gets_its_error_code_and_nothing_else_changes(make_server):
    server = make_server({"groups.max_members": 3})
    server.register("owner", "anna", "bert", "carl", "dora")
    owner, anna = server.client("owner"), server.client("anna")
    gid = owner.group_create("small", ["anna"])
    cases = [
        (lambda: owner.send(None, "x", group="g-nope"), "unknown_group"),
        (lambda: owner.group_info("g-nope"), "unknown_group"),
        (lambda: server.client("bert").send(None, "x", group=gid), "not_member"),
        (lambda: anna.group_add(gid, ["bert"]), "not_admin"),
        (lambda: anna.group_remove(gid, ["owner"]), "not_admin"),
        (lambda: anna.group_rename(gid, "mine"), "not_admin"),
        (lambda: owner.group_add(gid, ["bert", "carl"]), "group_full"),
        (lambda: owner.group_create("big", ["anna", "bert", "carl"]), "group_full"),
        (lambda: owner.group_add(gid, ["nobody"]), "unknown_user"),
        (lambda: owner.group_create("ghosts", ["nobody"]), "unknown_user"),
        (lambda: owner.group_admin(gid, "owner", False), "bad_field"),
        (lambda: owner.request({"type": "msg", "id": "x", "to": "anna", "group": gid, "body": "x"}),
         "bad_field"),
    ]
    for call, code in cases:
        with pytest.raises(ServerError) as err:
            call()
        assert err.value.code == code
    info = owner.group_info(gid)
    assert (info["name"], info["members"], info["admins"]) == ("small", ["owner", "anna"], ["owner"])
    owner.send(None, "still fine", id="ok1", group=gid)
    assert [f["id"] for f in take(anna, 2, ("msg", "group_event")) if f["type"] == "msg"] == ["ok1"]


def test_adding_a_member_again_or_removing_a_non_member_is_ok_and_tells_nobody(server):
    server.register("owner", "anna", "bert")
    owner, anna = server.client("owner"), server.client("anna")
    gid = owner.group_create("quiet", ["anna"])
    take(anna, 1, ("group_event",))
    take(owner, 1, ("group_event",))
    owner.group_add(gid, ["anna"])
    owner.group_remove(gid, ["bert"])
    owner.group_remove(gid, ["owner"])  # your own name is ignored: also nothing to do
    owner.send(None, "next", id="n1", group=gid)
    assert [f.get("id", f.get("event")) for f in take(anna, 1, ("msg", "group_event"))] == ["n1"]
    assert quiet(anna) == [] and [f for f in quiet(owner) if f["type"] != "receipt"] == []
    assert owner.group_info(gid)["members"] == ["owner", "anna"]


def test_membership_survives_kill_9_and_a_retransmitted_id_is_fanned_out_once(server):
    server.register("owner", "anna", "bert")
    owner = server.client("owner")
    gid = owner.group_create("durable", ["anna", "bert"])
    owner.send(None, "before", id="b1", group=gid)
    server.restart()  # kill -9
    owner = server.client("owner")
    assert owner.group_info(gid)["members"] == ["owner", "anna", "bert"]
    owner.send(None, "after", id="a1", group=gid)
    owner.send(None, "after", id="a1", group=gid)  # a retransmission: ✓ again, no second copy
    for user in ("anna", "bert"):
        c = server.client(user)
        frames = take(c, 3, ("msg", "group_event"))
        assert [f.get("id", f.get("event")) for f in frames] == ["created", "b1", "a1"]
        assert [f for f in c.drain(0.3) if f["type"] == "msg"] == []


def test_pipelined_messages_fanned_out_together_keep_order_and_a_repeated_id_goes_once(server):
    """A pipelining sender's messages wait together in the group's queue and go out as one batch:
    a repeated id inside that batch is still a retransmission (✓ twice, one copy)."""
    server.register("piper", "pia", "pim")
    piper = server.client("piper")
    gid = piper.group_create("pipes", ["pia", "pim"])
    ids = [piper.send_nowait(None, f"p{i}", id=f"p{i}", group=gid)["id"] for i in range(30)]
    piper.send_nowait(None, "p3 again", id="p3", group=gid)
    assert sorted(_ids(take(piper, 31, ("sent",)), "sent")) == sorted(ids + ["p3"])
    for user in ("pia", "pim"):
        c = server.client(user)
        assert _ids(take(c, 31, ("msg", "group_event"))) == ids
        assert [f for f in c.drain(0.3) if f["type"] == "msg"] == []


def test_a_sender_over_its_fan_out_budget_waits_and_nothing_is_dropped(make_server, ask):
    """groups.sender_budget = 8 copies: a 5-member group's messages cost 4 each, so two are in
    flight at most; a sender pipelining 40 waits for answers, and every one arrives, in order."""
    server = make_server({"groups.sender_budget": 8})
    owner, *members = register_many(server, ["budgeted", "bm1", "bm2", "bm3", "bm4"])
    boss = server.client(owner)
    gid = boss.group_create("budget", members)
    ids = [boss.send_nowait(None, f"b{i}", id=f"b{i}", group=gid)["id"] for i in range(40)]
    assert sorted(_ids(take(boss, 40, ("sent",)), "sent")) == sorted(ids)
    for m in members:
        with server.client(m) as c:
            assert _ids(take(c, 40, ("msg",))) == ids
    with server.shell() as sh:
        assert ask(sh, "node.groups.counters['budget_waits']") > 0
        assert ask(sh, "node.groups.spending") == {}


def test_a_sender_making_copies_faster_than_groups_sender_copies_waits_and_nothing_is_dropped(make_server, ask):
    """groups.sender_copies = 200 per second after 1 s worth: 30 messages to a 9-member group of
    offline members (270 copies) make the sender's session wait; every message still arrives, in
    order, so a flood of big-group messages is slowed, not refused."""
    server = make_server({"groups.sender_copies": 200, "session.rate_burst": 1.0})
    owner, *members = register_many(server, ["pacer", *(f"pm{i}" for i in range(9))])
    boss = server.client(owner)
    gid = boss.group_create("paced", members)
    ids = [boss.send_nowait(None, f"p{i}", id=f"p{i}", group=gid)["id"] for i in range(30)]
    assert sorted(_ids(take(boss, 30, ("sent",)), "sent")) == sorted(ids)
    with server.client(members[-1]) as c:
        assert _ids(take(c, 30, ("msg",))) == ids
    with server.shell() as sh:
        assert ask(sh, "node.groups.counters['pace_waits']") > 0


GROUP_MSGS = 20


@pytest.mark.slow
def test_a_message_to_1024_members_is_stored_once_per_shard_while_1to1_traffic_flows(make_server):
    """Every copy of a group message on one shard is one G record with one seq that every
    member's queue references (docs/ARCHITECTURE.md, "offd on disk"), and 1:1 round trips
    go on while 1024-member fan-outs run (the hub-blocked gate checks no fan-out stalls)."""
    server = make_server({"offd.shards": 1})
    owner, first, *rest = register_many(server, [f"big{i:04d}" for i in range(1024)])
    last = rest[-1]
    server.register("outsider")
    boss = server.client(owner)
    gid = boss.group_create("huge", [first, *rest])
    head, tail, outsider = server.client(first), server.client(last), server.client("outsider")
    take(head, 1, ("group_event",))
    take(tail, 1, ("group_event",))
    group_ids = [boss.send_nowait(None, f"to all {i}", group=gid)["id"] for i in range(GROUP_MSGS)]
    direct_ids = []
    for i in range(30):
        direct_ids.append(outsider.send_nowait(last, f"direct {i}")["id"])
        outsider.ping()
    assert sorted(f["id"] for f in take(boss, GROUP_MSGS, ("sent",))) == sorted(group_ids)
    at_head = {f["id"]: f["seq"] for f in take(head, GROUP_MSGS, ("msg",))}
    at_tail = take(tail, GROUP_MSGS + 30, ("msg",))
    assert [f["id"] for f in at_tail if f["from"] == "outsider"] == direct_ids
    assert {f["id"]: f["seq"] for f in at_tail if f["from"] == owner} == at_head  # one copy, one seq
    server.stop()
    shard = os.path.join(server.data_dir, "offd", "shard-000")
    kinds = collections.Counter()
    for name in os.listdir(shard):
        with open(os.path.join(shard, name), "rb") as f:
            kinds.update(r[0] if r[0] != "P" else r[4] for r in record.scan(f.read())[0])
    assert kinds["G"] == kinds["F"] == GROUP_MSGS and kinds["gmsg"] == 0


def test_cli_group_commands(server):
    server.register("alice", "bob", "carol")

    def cli(*args, user="alice", ok=True):
        out = subprocess.run([sys.executable, "-m", "whatsup.cli.whatsup", "--server", server.server, *args,
                              "--as", user, "--password", f"pw-{user}"], capture_output=True, text=True,
                             timeout=30)
        assert (out.returncode == 0) == ok, out.stderr
        return out.stdout if ok else out.stderr

    gid = cli("group", "create", "friends", "bob").strip()
    cli("group", "add", gid, "carol")
    assert cli("group", "info", gid).split() == [gid, "friends", "alice", "*", "bob", "carol"]
    assert cli("group", "list", user="carol").split() == [gid, "3", "friends"]
    assert "not_admin" in cli("group", "remove", gid, "alice", user="bob", ok=False)
    mid = cli("send", "--group", gid, "hello friends").strip()
    cli("group", "remove", gid, "carol")
    cli("group", "leave", gid, user="bob")
    inbox = cli("inbox", "--json", user="bob")
    assert '"event": "created"' in inbox and mid in inbox and '"event": "left"' in inbox


def test_cli_chat_in_a_group_and_presence(server):
    server.register("alice", "bob")
    alice = server.client("alice")
    gid = alice.group_create("chatters", ["bob"])
    base = [sys.executable, "-m", "whatsup.cli.whatsup", "--server", server.server]
    auth = ["--as", "bob", "--password", "pw-bob"]
    out = subprocess.run(base + ["chat", "--group", gid] + auth, input="hello from the cli\n",
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"chatting in {gid} as bob" in out.stdout
    got = [f for f in take(alice, 2, ("msg", "group_event")) if f["type"] == "msg"]
    assert [(f["from"], f["group"], f["body"]) for f in got] == [("bob", gid, "hello from the cli")]
    out = subprocess.run(base + ["presence", "alice"] + auth, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "alice is online", out.stderr
