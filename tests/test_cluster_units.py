"""The cluster package against a real redis-server: the map, the engine's timeouts, the
directory's epochs and leases, the inboxes (whatsup/cluster/)."""
import os
import time

import gevent
import gevent.event
import pytest
import redis

from whatsup.cluster import engine, map as cmap, wire
from whatsup.cluster.directory import Directory, MapMismatch
from whatsup.cluster.link import Link, Options
from whatsup.runtime import ProcessTable
from whatsup.runtime.process import Pid
from whatsup.runtime.supervisor import SupSpec, Supervisor
from whatsup.testing import Recorder

FAST = Options(timeout=1.0, block=0.2, lease=0.6, retry_for=3.0, request_timeout=3.0, batch=64)


def three(url, shards=6):
    return cmap.ClusterMap(url, shards, {n: {"shards": s} for n, s in cmap.spread(["a", "b", "c"], shards).items()})


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        gevent.sleep(0.02)


def test_the_map_places_every_shard_once_and_refuses_gaps_and_overlaps(tmp_path):
    m = three("redis://127.0.0.1:1/0")
    assert sorted(m.owner) == ["a", "a", "b", "b", "c", "c"]
    assert {m.home(f"user{i}") for i in range(100)} == {"a", "b", "c"}
    with pytest.raises(cmap.MapError, match="belong to no node"):
        cmap.ClusterMap("redis://x:1/0", 3, {"a": {"shards": [0, 1]}})
    with pytest.raises(cmap.MapError, match="both"):
        cmap.ClusterMap("redis://x:1/0", 2, {"a": {"shards": [0, 1]}, "b": {"shards": [1]}})
    path = tmp_path / "cluster.toml"
    path.write_text(cmap.render("redis://127.0.0.1:1/0", 6, {n: {"shards": s, "listen": "127.0.0.1:1"}
                                                             for n, s in cmap.spread(["a", "b", "c"], 6).items()}))
    assert cmap.load(path).fingerprint() == m.fingerprint()
    shipped = cmap.load(os.path.join(os.path.dirname(__file__), "..", "etc", "cluster.toml"))
    assert sorted(shipped.owner) == sorted(sorted(shipped.nodes) * (shipped.shards // len(shipped.nodes)))


def test_a_block_longer_than_the_timeout_fails_at_once_and_never_blocks_the_hub(redis_server):
    r = engine.connect(redis_server.url, timeout=0.3)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.02)) for _ in range(1000)])
    started = time.monotonic()
    assert r.xread({"s": "$"}, block=100) == []  # within the timeout: an empty answer
    with pytest.raises(redis.exceptions.TimeoutError):
        r.xread({"s": "$"}, block=2000)  # redis-py's default would re-send it silently
    assert time.monotonic() - started < 1.5
    assert len(ticks) >= 5, "the hub was blocked while redis-py waited"
    ticker.kill()
    r.set("k", "v")  # the pool made a new connection after the timed-out one
    assert r.get("k") == b"v"


def test_pids_and_frames_survive_the_wire():
    msg = ("send", Pid("b@x", 7), ("reply", {"type": "sent", "ref": 3, "ids": ["m1"]}))
    assert wire.decode(wire.encode(msg)) == ("send", Pid("b@x", 7), ["reply", {"type": "sent", "ref": 3, "ids": ["m1"]}])
    assert isinstance(wire.decode(wire.encode(msg))[1], Pid)


def test_boot_epochs_grow_and_a_different_map_is_refused(redis_server):
    r = engine.connect(redis_server.url, timeout=1.0)
    m = three(redis_server.url)
    d = Directory(r, m, "a", lease=5)
    first = d.boot(clock=lambda: 1000.0)
    assert Directory(r, m, "a", lease=5).boot(clock=lambda: 999.0) > first  # even if the clock went back
    assert d.leases()["a"][0] == first + 1
    other = cmap.ClusterMap(redis_server.url, 6, {"a": {"shards": [0, 1, 2]}, "b": {"shards": [3, 4, 5]}, "c": {}})
    with pytest.raises(MapMismatch, match="differs"):
        Directory(r, other, "c", lease=5).boot()
    assert d.leases()["b"] == (None, None)


def test_a_placement_of_a_lapsed_or_older_boot_is_absent_and_reaped(redis_server):
    r = engine.connect(redis_server.url, timeout=1.0)
    m = three(redis_server.url)
    a = Directory(r, m, "a", lease=0.3)
    a.boot()
    a.place("alice", Pid("a", 11))
    live = {n: e for n, (e, _) in a.leases().items() if e is not None}
    assert a.lookup("alice", live) == ("a", Pid("a", 11))
    time.sleep(0.4)  # the lease lapsed: the entry no longer counts
    live = {n: e for n, (e, _) in a.leases().items() if e is not None}
    assert a.lookup("alice", live) is None
    again = Directory(r, m, "a", lease=5)
    again.boot()  # the next boot reaps what the previous one placed
    assert r.hget("whatsup:where", "alice") is None
    again.place("bob", Pid("a", 3))
    again.leave("bob", Pid("a", 4))  # not ours any more: kept
    assert r.hget("whatsup:where", "bob") is not None
    again.leave("bob", Pid("a", 3))
    assert r.hget("whatsup:where", "bob") is None


@pytest.fixture
def node(redis_server):
    """``node(name)``: a node's process table with its link running (inbox, outbox, lease) in
    this process; every one is stopped when the test ends."""
    started = []

    def make(name, services=()):
        table = ProcessTable(name)
        link = Link(table, three(redis_server.url), name, FAST)
        link.services.update(services)
        link.connect()
        root = table.start(Supervisor, SupSpec("one_for_one", tuple(link.children())), name="root")
        started.append((table, link, root))
        return table, link, root
    yield make
    for table, link, root in started:
        table.stop(root)
        link.client.close()


def test_a_send_to_a_pid_on_another_node_lands_in_its_mailbox(node):
    ta, a, _ = node("a")
    tb, b, _ = node("b")
    got = []
    pid = tb.spawn(Recorder, got)
    wait_for(lambda: "b" in a.live)
    ta.send(pid, ("reply", {"type": "ok", "ref": 1}))
    ta.notify(pid, ("poke",))
    wait_for(lambda: len(got) == 2)
    assert got == [("reply", {"type": "ok", "ref": 1}), ("poke",)]
    a.services["double"] = lambda x: x * 2
    assert b.call("a", "double", 5) == 10


def test_a_call_served_for_another_node_runs_as_a_process_of_the_serving_node(node):
    ta, a, tb, b = linked(node)
    serving, release = gevent.event.Event(), gevent.event.Event()

    def slow(x):
        serving.set()
        release.wait(10)
        return x
    a.services["slow"] = slow
    call = gevent.spawn(b.call, "a", "slow", 7)
    assert serving.wait(10)
    assert [p.entity for p in ta.processes("task")] == ["slow"]  # in ps(), stopped by the tree
    release.set()
    assert call.get(timeout=10) == 7
    wait_for(lambda: not ta.processes("task"))


def test_a_served_request_stays_pending_until_answered_and_a_restarted_node_serves_it_again(node, redis_server):
    ta, a, _ = node("a")
    tb, b, rootb = node("b")
    wait_for(lambda: "b" in a.live and "a" in b.live)
    got, served = [], []
    session = ta.spawn(Recorder, got)
    b.services["message"] = lambda pid, ref, body: served.append((pid, ref, body))
    a.forward("b", session, 1, "message", "hi")
    wait_for(lambda: served)
    r = redis.Redis.from_url(redis_server.url)
    assert r.xpending("whatsup:inbox:b", "nodes")["pending"] == 1  # not acked: no answer yet
    tb.stop(rootb)  # b dies before answering; its next boot reads its pending entries first
    tb, b, _ = node("b", {"message": lambda pid, ref, body: served.append((pid, ref, body))})
    wait_for(lambda: len(served) == 2)
    assert served[1] == served[0]
    tb.send(session, ("reply", {"type": "sent", "ref": 1}))  # the answer acks the entry
    wait_for(lambda: got)
    wait_for(lambda: r.xpending("whatsup:inbox:b", "nodes")["pending"] == 0)
    assert r.xlen("whatsup:inbox:b") == 0  # XDEL after XACK: no done work left in the stream
    # a either got the answer, or (had it seen b's new boot first) store_failed and drops the answer:
    # then its client retries and the dedup window of b's router answers ✓ (tests/test_cluster.py)
    assert got[0][1]["type"] in ("sent", "error") and not a.inflight


def test_a_request_to_a_node_whose_lease_lapses_fails_retryable_and_a_late_answer_is_dropped(node):
    ta, a, _ = node("a")
    tb, b, rootb = node("b")
    wait_for(lambda: "b" in a.live)
    got = []
    session = ta.spawn(Recorder, got)
    b.services["message"] = lambda pid, ref, body: None  # never answers
    tb.stop(rootb)  # b's lease is no longer renewed
    a.forward("b", session, 7, "message", "hi")
    wait_for(lambda: got, timeout=5)
    assert got[0][1]["code"] == "store_failed" and got[0][1]["ref"] == 7
    assert "b" not in a.live
    a.received("0-1", ("send", session, ("reply", {"type": "sent", "ref": 7}), a.epoch))
    gevent.sleep(0.1)
    assert len(got) == 1  # the answer after store_failed is dropped: the client retries under its own


def test_traffic_pauses_while_redis_restarts_and_nothing_acknowledged_is_lost(node, redis_server):
    ta, a, _ = node("a")
    tb, b, _ = node("b")
    wait_for(lambda: "b" in a.live)
    got = []
    pid = tb.spawn(Recorder, got)
    for i in range(50):
        ta.send(pid, ("n", i))
    wait_for(lambda: len(got) == 50)
    redis_server.stop()  # a clean stop writes the append-only file; a kill -9 may lose 1 s of it
    for i in range(50, 100):
        ta.send(pid, ("n", i))
    gevent.sleep(0.3)
    redis_server.start()
    wait_for(lambda: len(got) >= 100, timeout=20)
    assert sorted({m[1] for m in got}) == list(range(100))  # a retried pipeline may repeat, never lose


def linked(node):
    """Nodes a and b, each seeing the other live: (table a, link a, table b, link b)."""
    ta, a, _ = node("a")
    tb, b, _ = node("b")
    wait_for(lambda: "b" in a.live and "a" in b.live)
    return ta, a, tb, b


def answering(served, table):
    """A home's "message" service: records the body and answers ✓ through ``table()``."""
    def serve(pid, ref, body):
        served.append(body)
        table().send(pid, ("reply", {"type": "sent", "ref": ref}))
    return serve


def test_requests_after_a_lost_one_are_sent_again_in_order_and_none_is_served_out_of_it(node):
    ta, a, tb, b = linked(node)
    got, served = [], []
    session = ta.spawn(Recorder, got)
    b.services["message"] = answering(served, lambda: tb)
    a.forward("b", session, 1, "message", "m1")
    wait_for(lambda: len(got) == 1)
    real_post = a.post
    a.post = lambda node, msg, on_fail=None: None  # m2's entry is lost, as a Redis tail can be
    a.forward("b", session, 2, "message", "m2")
    a.post = real_post
    a.forward("b", session, 3, "message", "m3")  # b sees the gap and refuses it: a sends m2 and m3 again
    a.forward("b", session, 4, "message", "m4")
    wait_for(lambda: len(got) == 4)
    assert served == ["m1", "m2", "m3", "m4"]
    assert [f["type"] for _, f in got] == ["sent"] * 4 and b.counters["gaps"] >= 1
    assert a.counters["lanes_resent"] == 1


def test_requests_to_a_node_that_is_down_wait_for_it_in_order(node):
    ta, a, _ = node("a")
    got, served = [], []
    session = ta.spawn(Recorder, got)
    a.forward("b", session, 1, "message", "m1")  # b has not started: held
    a.forward("b", session, 2, "message", "m2")
    tb, b, _ = node("b", {"message": answering(served, lambda: tb)})
    wait_for(lambda: len(got) == 2)
    assert served == ["m1", "m2"] and [f["type"] for _, f in got] == ["sent", "sent"]


def test_pushed_items_after_a_lost_push_are_held_back_until_the_home_pushes_again(node):
    ta, a, tb, b = linked(node)
    got, resyncs = [], []
    session = ta.spawn(Recorder, got)
    b.services["resync"] = resyncs.append
    tb.send(session, ("items", [b"1", b"2"], 7, 0, "b"))
    tb.send(session, ("items", [b"5"], 7, 4, "b"))  # items 2 and 3 were lost on the way
    tb.send(session, ("items", [b"6"], 7, 5, "b"))
    wait_for(lambda: resyncs)
    tb.send(session, ("items", [b"3", b"4", b"5"], 8, 0, "b"))  # the home pushes again from the first unacked
    wait_for(lambda: len(got) == 2)
    assert [m[1] for m in got] == [[b"1", b"2"], [b"3", b"4", b"5"]] and resyncs == [session]
