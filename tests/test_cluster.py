"""Three real whatsupd nodes joined through a real redis-server (docs/ARCHITECTURE.md, "A cluster"):
users homed on one node, connected to another, writing to a third."""

import pytest
import redis

from social import quiet, take, wait_for
from whatsup.client import ServerError


def msgs(frames):
    return [f for f in frames if f["type"] == "msg"]


def receipts(frames):
    return [(f["status"], f["ids"], f["from"]) for f in frames if f["type"] == "receipt"]


def wait_receipts(client, want, timeout=15.0):
    got = []
    import time
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        f = client.recv(0.5)
        if f is not None and f["type"] == "receipt":
            got.append((f["status"], f["ids"], f["from"]))
    return got


def test_a_message_across_three_nodes_gets_all_three_ticks(make_cluster):
    cl = make_cluster()
    a, b, c = cl.names
    alice, bob = cl.homed(a, "alice")[0], cl.homed(b, "bob")[0]
    cl[c].register(alice)   # registered through a node that is not their home
    cl[a].register(bob)
    with cl[c].client(alice) as al, cl[a].client(bob) as bo:
        sent = al.send(bob, "hi", id="m1")   # ✓: after bob's home (b) fsynced it
        assert sent["id"] == "m1"
        got = msgs(bo.drain(1.0))   # pushed by b to bob's session on a; drain acks it
        assert [(m["from"], m["id"], m["body"]) for m in got] == [(alice, "m1", "hi")]
        assert wait_receipts(al, 1) == [("delivered", ["m1"], bob)]   # ✓✓, through alice's home (a)
        bo.read(alice, ["m1"])
        assert wait_receipts(al, 1) == [("read", ["m1"], bob)]        # the third tick
        again = al.send(bob, "hi", id="m1")   # a retransmission: acked again, not queued twice
        assert again["ts"] == sent["ts"]
        assert msgs(bo.drain(0.5)) == []


def test_an_offline_user_homed_on_another_node_gets_the_message_at_login(make_cluster):
    cl = make_cluster()
    a, b, c = cl.names
    alice, carol = cl.homed(a, "alice")[0], cl.homed(c, "carol")[0]
    cl[a].register(alice, carol)
    with cl[b].client(alice) as al:
        for i in range(5):
            al.send(carol, f"m {i}", id=f"m{i}")  # each ✓ after carol's home (c) fsynced it
        with pytest.raises(ServerError, match="unknown_user"):
            al.send("nobody-at-all", "x")
    with cl[a].client(carol) as ca:   # logs in on a: her home (c) pushes her queue there
        assert ca.last_login["queued"] == 5
        assert [m["id"] for m in msgs(ca.drain(1.0))] == [f"m{i}" for i in range(5)]
    with cl[b].client(carol) as ca:
        assert ca.last_login["queued"] == 0


def test_a_node_whose_map_differs_from_the_recorded_one_refuses_to_start(make_cluster, tmp_path):
    cl = make_cluster()
    other = tmp_path / "other.toml"
    other.write_text(open(cl.map_path).read().replace("shards = 12", "shards = 12\n# moved", 1)
                     .replace("[0, 3, 6, 9]", "[0, 3, 6]").replace("[1, 4, 7, 10]", "[1, 4, 7, 10, 9]"))
    out = cl.try_start("a@localhost", other)
    assert out.returncode != 0
    assert "differs from the one recorded in Redis" in out.stderr


def test_presence_typing_and_blocking_reach_across_nodes(make_cluster):
    cl = make_cluster()
    a, b, c = cl.names
    alice, bob = cl.homed(a, "alice")[0], cl.homed(b, "bob")[0]
    cl[c].register(alice, bob)
    with cl[c].client(alice) as al:   # alice on c follows bob, homed on b
        assert al.subscribe(bob)["online"] is False
        with cl[a].client(bob) as bo:  # bob comes online on a
            assert take(al, 1, ("presence",))[0]["online"] is True
            bo.typing(alice)
            assert take(al, 1, ("typing",))[0] == {"type": "typing", "from": bob, "state": "typing"}
            bo.block(alice)            # stored on bob's home (b), copied to every node
            assert bo.blocked() == [alice]
            with pytest.raises(ServerError, match="blocked"):
                bo.send(alice, "no")
            al.send(bob, "hello?", id="x1")   # ✓, never delivered (docs/PROTOCOL.md, "Blocking")
            al.typing(bob)
            assert quiet(bo) == []
            seen = al.subscribe(bob)
            assert seen["online"] is False and "last_seen" not in seen  # blocked: bob shows offline to her
        assert quiet(al) == []  # and no update when he leaves


def test_the_shell_of_any_node_finds_a_session_and_looks_into_other_nodes(make_cluster, ask):
    cl = make_cluster()
    a, b, c = cl.names
    alice = cl.homed(a, "alice")[0]
    cl[b].register(alice)
    with cl[c].client(alice):   # homed on a, connected to c
        answers = set()
        for name in cl.names:
            with cl[name].shell() as sh:
                answers.add(ask(sh, f"(lambda w: (w['node'], repr(w['pid'])))(where('user', {alice!r}))"))
        assert len(answers) == 1  # the same node and pid from every node
        (node, pid), = answers
        assert node == c and pid.startswith(f"<{c}.")
        where = redis.Redis.from_url(cl.redis.url).hget("whatsup:where", alice).decode().split()
        assert (where[0], f"<{where[0]}.{where[2]}>") == (c, pid)  # the directory, written by c
        with cl[a].shell() as sh:
            assert ask(sh, f"mailbox({pid!r})") == []  # a remote pid's mailbox, asked on c
            assert ask(sh, f"{alice!r} in repr(rpc({c!r}, 'i', {pid!r}))")  # its state, asked on c
            assert ask(sh, "[(r['node'], r['up']) for r in nodes()]") == [(n, True) for n in sorted(cl.names)]
            assert ask(sh, f"[r['connections'] for r in nodes() if r['node'] == {c!r}]") == [1]
            assert ask(sh, "stats(0.1)['metrics']['cluster_nodes_live']") == 3
            assert ask(sh, "stats(0.1)['metrics']['cluster_events_total']['received']") > 0


def test_a_group_with_members_homed_on_every_node_keeps_messages_and_changes_in_order(make_cluster, ask):
    cl = make_cluster()
    a, b, c = cl.names
    owner, anna, bert, carl = cl.homed(a, "owner")[0], cl.homed(b, "anna")[0], cl.homed(c, "bert")[0], \
        cl.homed(a, "carl")[0]
    cl[b].register(owner, anna, bert, carl)
    # each connected to a node that is not their home; the group lives on owner's node (c)
    ow, an, be, ca = cl[c].client(owner), cl[c].client(anna), cl[a].client(bert), cl[b].client(carl)
    gid = ow.group_create("club", [anna, bert])
    assert cl.map.home(gid) == c
    ow.send(None, "m1", id="m1", group=gid)   # ✓: every member's home fsynced its copy
    ow.group_remove(gid, [bert])
    ow.send(None, "m2", id="m2", group=gid)
    ow.group_add(gid, [carl])
    ow.group_rename(gid, "the club")
    an.send(None, "m3", id="m3", group=gid)   # from a member connected elsewhere than the group's home

    def story(frames):
        return [f["id"] if f["type"] == "msg" else f["event"] for f in frames]
    assert story(take(an, 6, ("msg", "group_event"))) == ["created", "m1", "removed", "m2", "added", "renamed"]
    assert story(take(be, 3, ("msg", "group_event"))) == ["created", "m1", "removed"]
    assert story(take(ca, 3, ("msg", "group_event"))) == ["added", "renamed", "m3"]
    info = ca.group_info(gid)   # asked on b, answered by the group's home
    assert (info["name"], sorted(info["members"])) == ("the club", sorted([owner, anna, carl]))
    with pytest.raises(ServerError, match="not_member"):
        be.send(None, "let me in", group=gid)
    for client in (ow, an, be, ca):
        client.close()
    for name in cl.names:  # the calls and group operations served for other nodes ran as processes
        with cl[name].shell() as sh:  # (the closed connections' greenlets take a moment to end)
            wait_for(lambda: ask(sh, "strays()") == [], f"greenlets outside the process table on {name}")
