"""Everything that lives in a node is a process (issue 13): in the table, supervised, stopped by
the tree; and the router answers every waiter of a message it cannot store."""
import zlib

import gevent
import pytest
from gevent.event import Event

from social import wait_for
from whatsup.protocol import Code, ProtocolError
from whatsup.runtime import ProcessTable
from whatsup.runtime.supervisor import SupSpec, Supervisor
from whatsup.runtime.timers import Timers
from whatsup.social.groups import SUPERVISOR as GROUPS, Group, Groups

SUPERVISION = "__import__('whatsup.runtime.supervisor', fromlist=['x'])"  # in the node's shell


def bodies(client, n):
    """The bodies of the next ``n`` messages ``client`` receives (events skipped; all acked)."""
    got = []
    while len(got) < n:
        frame = client.recv(10)
        assert frame is not None, f"{client.user} got {got}"
        if frame["type"] == "msg":
            got.append(frame["body"])
    return got


def test_every_greenlet_of_a_node_is_a_process_after_traffic_groups_and_a_crash_and_stop_leaves_none(
        server, ask):
    server.register("alice", "bob", "carol")
    alice, bob, carol = (server.client(u) for u in ("alice", "bob", "carol"))
    gid = alice.group_create("g", ["bob", "carol"])
    alice.send(None, "to all", group=gid)
    alice.send("bob", "one to one")
    alice.subscribe("bob")
    assert sorted(bodies(bob, 2)) == ["one to one", "to all"]  # acked: ✓✓ receipts
    shard_of_bob = "(lambda w: (str(w['pid']), w['up']))(where('offd', 'bob'))"
    with server.shell() as sh:
        before, _ = ask(sh, shard_of_bob)
        assert "killed" in ask(sh, f"kill({before!r}, 'crash test')")
        wait_for(lambda: ask(sh, shard_of_bob)[0] != before and ask(sh, shard_of_bob)[1], "offd restart")
        assert alice.send("bob", "after the crash")["type"] == "sent"
        assert bodies(bob, 1) == ["after the crash"]
        assert bodies(carol, 1) == ["to all"]
        kinds = set(ask(sh, "[p.kind for p in table.processes()]"))
        assert {"router", "presence", "blocks", "groups", "group", "commit", "maintenance", "sweeper"} <= kinds
        assert ask(sh, "strays()") == []
    for c in (alice, bob, carol):
        c.close()
    assert server.stop() == 0
    log = server.log()
    assert "stopped" in log and "left running after stop" not in log


def test_a_group_runs_in_a_supervised_process_and_a_killed_one_is_replaced_by_the_next_operation(
        server, ask):
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    gid = alice.group_create("g", ["bob"])
    groups = f"[(str(pid), pid in {{p.pid for p in table.processes('group')}}) for _, pid, _ in " \
             f"{SUPERVISION}.which_children(table, 'groups')]"
    with server.shell() as sh:
        ((first, running),) = ask(sh, groups)
        assert running and ask(sh, f"i({first!r})['entity']") == gid
        assert "killed" in ask(sh, f"kill({first!r})")
        wait_for(lambda: ask(sh, groups) == [], "the supervisor forgets a killed group process")
        assert alice.group_rename(gid, "renamed")["type"] == "ok"
        assert alice.send(None, "after", group=gid)["type"] == "sent"
        ((second, running),) = ask(sh, groups)
        assert running and second != first and ask(sh, f"i({second!r})['entity']") == gid
    frames = [bob.recv(10) for _ in range(3)]  # created, renamed, the message
    assert [f.get("event") or f["body"] for f in frames] == ["created", "renamed", "after"]


def test_a_quiet_groups_process_stops_and_the_next_message_starts_another(make_server, ask):
    server = make_server({"groups.process_idle": 0.3})
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    gid = alice.group_create("g", ["bob"])
    alice.send(None, "first", group=gid)
    with server.shell() as sh:
        wait_for(lambda: ask(sh, "len(table.processes('group'))") == 0, "the idle group's process stops")
        assert ask(sh, "node.groups.groups[%r].worker" % gid) is None
    assert alice.send(None, "second", group=gid)["type"] == "sent"
    assert bodies(bob, 2) == ["first", "second"]


def test_a_retransmission_waiting_with_the_first_send_for_a_down_shard_gets_its_answer_too(
        make_server, ask):
    """The first send waits in the router for bob's offd shard; the same id sent again from the
    sender's next session joins it; when the wait ends in store_failed both are answered (the
    second session's request no longer leaks a slot of session.max_inflight)."""
    server = make_server({"runtime.restart_wait": 5.0, "offd.shards": 4})
    senders = ["alice", "amy", "ann", "ada", "abe"]
    bob_shard = zlib.crc32(b"bob") % 4
    sender = next(u for u in senders if zlib.crc32(u.encode()) % 4 != bob_shard)
    server.register(sender, "bob")
    with server.shell() as sh:
        assert ask(sh, "where('offd', 'bob')['shard']") == bob_shard
        ask(sh, f"{SUPERVISION}.terminate_child(table, 'offd', 'offd-{bob_shard}.0')")  # stays down
        first = server.client(sender)
        first.send_nowait("bob", "hi", id="same")
        wait_for(lambda: ask(sh, "len(router.pending)") == 1, "the first send waits for the shard")
        second = server.client(sender)  # replaces the first session
        frame = second.send_nowait("bob", "hi", id="same")
        answer = second._take(lambda f: f.get("ref") == frame["ref"], 15)
        assert answer is not None, "the retransmission was never answered"
        assert (answer["type"], answer["code"]) == ("error", "store_failed")
        assert ask(sh, "len(router.pending)") == 0
    first.close()
    second.close()



def test_a_change_waiting_on_a_group_whose_process_dies_is_answered_and_the_next_one_gets_a_new_process():
    """In-process, for the exact interleaving: the group's process is killed while it runs a change
    a session waits for; the session gets internal (no wait forever), and the group goes on."""
    table = ProcessTable()
    sup = table.start(Supervisor, SupSpec("one_for_one", ()), name=GROUPS)
    groups = Groups(table, Timers(table), None, None, None, max_members=8, fanout_chunk=8)
    groups.groups["g1"] = Group("g1", "g", {"alice": True})
    stuck, ran = Event(), []
    waiting = gevent.spawn(groups._serial, "g1", 7, lambda group: stuck.wait())
    gevent.sleep(0.05)  # the group's process runs the change, stuck
    (first,) = table.processes("group")
    table.kill(first.pid)
    with pytest.raises(ProtocolError) as refused:
        waiting.get(timeout=5)
    assert refused.value.code == Code.INTERNAL and refused.value.ref == 7
    groups._serial("g1", 8, ran.append)
    (second,) = table.processes("group")
    assert ran == [groups.groups["g1"]] and second.pid != first.pid and second.entity == "g1"
    table.stop(sup)
    assert table.processes("group") == []
