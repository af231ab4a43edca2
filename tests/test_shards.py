"""offd and account shards as supervised processes (in a live whatsupd, and one in-process
test that needs exact interleaving), and resharding."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import gevent
import pytest
from gevent.event import AsyncResult

from whatsup.client import ServerError
from whatsup.store.offd import Offd, ShardDown, record
from whatsup.runtime import ProcessTable
from whatsup.runtime.supervisor import SupSpec, Supervisor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = [sys.executable, os.path.join(ROOT, "tests", "support", "whatsupd_faults.py")]
ENV = {"PYTHONPATH": ROOT}


def faulty(make_server, settings=None, name="node"):
    return make_server(settings, name=name, command=FAULTS, env=ENV)


def inject(srv, command, timeout=20.0):
    """Run one fault-injector command in the live node; returns its where() answer."""
    out = os.path.join(srv.dir, "fault.out")
    if os.path.exists(out):
        os.unlink(out)
    with open(os.path.join(srv.dir, "fault"), "w") as f:
        f.write(command)
    srv.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not os.path.exists(out):
        assert time.monotonic() < deadline, f"no answer to {command!r}:\n{srv.log()}"
        time.sleep(0.02)
    with open(out) as f:
        return json.load(f)


def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def users_in_spool(directory):
    users = set()
    for name in os.listdir(directory):
        if name.startswith("seg-"):
            with open(os.path.join(directory, name), "rb") as f:
                users |= {r[1] for r in record.scan(f.read())[0] if r[0] == "P"}
    return users


def receive(client, n, timeout=20.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        frame = client.recv(1.0)
        if frame is not None and frame["type"] == "msg":
            got.append(frame)
    return got


def test_where_agrees_with_where_the_data_lives(make_server):
    srv = faulty(make_server)
    users = [f"user{i}" for i in range(12)]
    srv.register("sender", *users)
    with srv.client("sender") as c:
        for u in users:
            c.send(u, f"to {u}")
    shards = set()
    for u in users:
        place = inject(srv, f"where offd {u}")
        assert place["up"] and place["pid"].startswith("<whatsup@localhost.")
        assert u in users_in_spool(place["path"])
        others = [d for d in os.listdir(os.path.dirname(place["path"])) if d.startswith("shard-")]
        assert sum(u in users_in_spool(os.path.join(os.path.dirname(place["path"]), d))
                   for d in others) == 1
        acct = inject(srv, f"where accounts {u}")
        with sqlite3.connect(acct["path"]) as db:
            assert db.execute("select count(*) from accounts where key = ?", (u,)).fetchone() == (1,)
        shards.add(place["shard"])
    assert len(shards) > 1


def test_a_crashed_offd_shard_is_restarted_and_keeps_its_data_while_others_serve(make_server):
    srv = faulty(make_server)
    srv.register("alice", "bob", *[f"other{i}" for i in range(8)])
    with srv.client("alice") as alice:
        for i in range(5):
            alice.send("bob", f"m{i}", id=f"m{i}")
    before = inject(srv, "where offd bob")
    other = next(u for u in (f"other{i}" for i in range(8))
                 if inject(srv, f"where offd {u}")["shard"] != before["shard"])
    inject(srv, "crash offd bob")
    with srv.client("alice") as alice:  # another shard keeps serving
        alice.send(other, "still here")
    wait_for(lambda: "offd shard %d restarted" % before["shard"] in srv.log(), "no restart logged")
    after = inject(srv, "where offd bob")
    assert after["shard"] == before["shard"] and after["pid"] != before["pid"] and after["up"]
    log = srv.log()
    assert log.count("crashed handling") == 1 and "injected-fault" in log  # logged once, with its message
    with srv.client("bob") as bob:
        assert [m["body"] for m in receive(bob, 5)] == [f"m{i}" for i in range(5)]
    with srv.client(other) as c:
        assert [m["body"] for m in receive(c, 1)] == ["still here"]


def test_a_crashed_account_shard_is_restarted_and_its_users_still_log_in(make_server):
    srv = faulty(make_server)
    srv.register("alice", "bob")
    before = inject(srv, "where accounts bob")
    inject(srv, "crash accounts bob")
    after = inject(srv, "where accounts bob")  # waits for the restart
    assert after["shard"] == before["shard"] and after["pid"] != before["pid"]
    with srv.client("bob") as bob, srv.client("alice") as alice:
        alice.send("bob", "hi")
        assert [m["body"] for m in receive(bob, 1)] == ["hi"]
    srv.register("carol")


def test_callers_of_a_killed_offd_shard_get_shard_down_or_wait_for_its_restart(tmp_path):
    table = ProcessTable()
    offd = Offd(table, str(tmp_path), 2, 1 << 20, 100, 30.0, restart_wait=0.0).check()
    sup = table.start(Supervisor, SupSpec("one_for_one", tuple(offd.children())))
    durable = AsyncResult()
    offd.spool("bob").put("bob", "msg", {"type": "msg", "body": "hi"}, on_durable=durable.set)
    old = offd.industry.where("bob")["pid"]
    table.kill(old)
    gevent.sleep(0)  # the shard runs its terminate up to the final flush
    with pytest.raises(ShardDown, match="restarting"):
        offd.spool("bob")
    assert durable.get(timeout=10) is None  # the pending ✓ was made durable, not dropped
    offd.industry.wait = 10.0
    spool = offd.spool("bob")  # waits for the new incarnation
    assert offd.industry.where("bob")["pid"] != old and len(spool.items("bob")) == 1
    table.stop(sup)


def test_messages_to_a_user_on_a_crashing_shard_are_acked_only_when_durable_or_refused(make_server):
    srv = faulty(make_server, {"runtime.restart_wait": 0.0})
    srv.register("alice", "bob")
    bob = srv.client("bob")
    alice = srv.client("alice")
    total = 200
    acked, retried = _send_through_crashes(srv, alice, "bob", total, lambda i: alice.send_nowait(
        "bob", f"n{i}", id=f"n{i}"))
    assert len(acked) == total
    got = receive(bob, total, timeout=60)
    assert sorted(int(m["body"][1:]) for m in got) == list(range(total))  # none lost, none twice
    bodies = [int(m["body"][1:]) for m in got]
    first_try = [b for b in bodies if b not in retried]
    assert first_try == sorted(first_try)  # what was never refused keeps its order
    alice.close()
    bob.close()


def test_group_messages_while_the_groups_home_shard_crashes_arrive_once_each_on_screen(make_server):
    """The home shard of a group (it holds the fan-out intents) crashes three times under a
    pipelined stream to 12 members on every shard: each message gets ✓ or store_failed (then
    it is sent again, same id), and every member shows every message once."""
    srv = faulty(make_server, {"runtime.restart_wait": 0.0})
    members = [f"mate{i:02d}" for i in range(12)]
    srv.register("boss", *members)
    boss = srv.client("boss")
    gid = boss.group_create("crashing", members)
    total = 150
    acked, _ = _send_through_crashes(srv, boss, gid, total, lambda i: boss.send_nowait(
        None, f"n{i}", id=f"n{i}", group=gid))
    assert len(acked) == total
    for m in members:
        with srv.client(m) as c:  # the client shows a (group, from, id) once, whatever its seqs
            got = receive(c, total, timeout=30)
            assert sorted(int(f["body"][1:]) for f in got) == list(range(total)), m
    boss.close()


def _send_through_crashes(srv, client, entity, total, send):
    """Pipeline ``send(i)`` for i < total, crashing the offd shard of ``entity`` after every 50th
    (some sends land while it restarts); a store_failed is sent again, same id, until every one
    got ✓ or 60 s passed. Returns (the indexes that got ✓, those refused at least once)."""
    acked, pending, retried = set(), {}, set()
    for i in range(total):
        pending[send(i)["ref"]] = i
        if i % 50 == 49:
            inject(srv, f"crash offd {entity}")
    deadline = time.monotonic() + 60
    while len(acked) < total and time.monotonic() < deadline:
        frame = client.recv(2.0)
        if frame is None or "ref" not in frame:
            continue
        i = pending.pop(frame["ref"])
        if frame["type"] == "sent":
            acked.add(i)
        else:
            assert frame["code"] == "store_failed"  # the shard was restarting: retry, same id
            retried.add(i)
            pending[send(i)["ref"]] = i
    return acked, retried


def test_a_crash_loop_climbs_the_tree_and_stops_the_node(make_server):
    srv = faulty(make_server, {"runtime.max_restarts": 1, "runtime.restart_period": 600.0})
    srv.register("bob")
    for _ in range(4):  # shard restarts once, offd escalates, root restarts offd once, then gives up
        if srv.proc.poll() is not None:
            break
        try:
            inject(srv, "crash offd bob", timeout=10)
        except (AssertionError, ProcessLookupError):
            break
        time.sleep(0.2)
    assert srv.proc.wait(30) == 1
    log = srv.log()
    assert "offd: offd-" in log and "giving up" in log
    assert "the supervision tree gave up" in log


def test_resharding_4_to_8_loses_no_queued_message(make_server, tmp_path):
    settings = {"offd.shards": 4, "accounts.shards": 4}
    srv = make_server(settings)
    users = [f"reader{i}" for i in range(16)]
    srv.register("sender", *users)
    with srv.client("sender") as c:
        for i in range(160):
            c.send_nowait(users[i % 16], f"{i}", id=f"q{i}")
        sent = [c.recv(10) for _ in range(160)]
    assert all(f["type"] == "sent" for f in sent)
    reshard = [sys.executable, "-m", "whatsup.cli.reshard", "--data-dir", srv.data_dir,
               "--offd-shards", "8", "--accounts-shards", "8"]
    busy = subprocess.run(reshard, capture_output=True, text=True, timeout=60)
    assert busy.returncode != 0 and "in use" in busy.stderr  # refuses a live data dir
    assert srv.stop() == 0
    srv.settings.update({"offd.shards": 8, "accounts.shards": 8})
    with pytest.raises(RuntimeError, match="with whatsup-reshard"):
        srv.start()
    done = subprocess.run(reshard, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "160 items of 16 users moved and verified" in done.stdout
    assert "offd: verifying shards: 8/8" in done.stderr  # progress, as lines when not on a terminal
    for setting in ("offd.shards", "accounts.shards"):
        del srv.settings[setting]  # a node without shard settings takes the data dir's counts
    srv.start()
    last = {}
    for i, u in enumerate(users):
        with srv.client(u) as c:
            got = receive(c, 10)
            assert [int(m["body"]) for m in got] == list(range(i, 160, 16))
            last[u] = got[-1]["seq"]
    with srv.client("sender") as c:  # seqs continue above the old shards' counters
        c.send(users[0], "after")
    with srv.client(users[0]) as c:
        assert receive(c, 1)[0]["seq"] > max(last.values())
    with pytest.raises(ServerError, match="user_taken"):
        srv.register(users[3])  # the accounts moved too
