"""Supervisors, factories and the shard registry as plain gevent code (no sockets, no disk)."""
import gevent
import pytest

from whatsup.runtime import Process, ProcessDead, ProcessTable, StartFailed
from whatsup.runtime.factory import Factory, ShardDown
from whatsup.runtime.industry import Industry, ShardRegistry, UnknownKind
from whatsup.runtime.supervisor import Child, SupSpec, Supervisor, adopt, which_children


class Worker:
    """Crashes on ("crash",), answers ("ping",), exits normally on ("quit",)."""

    @staticmethod
    def init(proc, *args):
        if args and args[0] == "fail":
            raise RuntimeError("cannot open my store")
        return {"args": args}

    @staticmethod
    def handle_call(proc, request, st):
        if request == ("ping",):
            return "pong", st
        if request == ("quit",):
            proc.stop("normal")
        raise RuntimeError(f"crash on {request!r}")


def child(table, cid, restart="permanent", *args):
    return Child(cid, lambda: table.start(Worker, *args, name=cid), restart)


def crash(table, name):
    with pytest.raises(ProcessDead):
        table.call(name, ("crash",))
    gevent.sleep(0)  # let the supervisor handle the DOWN


def children(table, sup):
    return {cid: pid for cid, pid, _ in which_children(table, sup)}


@pytest.mark.parametrize("strategy,restarted", [
    ("one_for_one", {"b"}), ("rest_for_one", {"b", "c"}), ("one_for_all", {"a", "b", "c"})])
def test_a_crashed_child_is_restarted_with_what_its_strategy_names(strategy, restarted):
    t = ProcessTable()
    sup = t.start(Supervisor, SupSpec(strategy, tuple(child(t, c) for c in "abc")), name="sup")
    before = children(t, sup)
    crash(t, "b")
    after = children(t, sup)
    assert {c for c in "abc" if after[c] != before[c]} == restarted
    assert all(t.call(c, ("ping",)) == "pong" for c in "abc")
    t.stop(sup)
    assert len(t) == 0


def test_transient_child_ending_normally_and_temporary_child_are_not_restarted():
    t = ProcessTable()
    sup = t.start(Supervisor, SupSpec("one_for_one", (child(t, "tr", "transient"),
                                                      child(t, "tmp", "temporary"))), name="sup")
    with pytest.raises(ProcessDead):
        t.call("tr", ("quit",))
    crash(t, "tmp")
    assert children(t, sup) == {}
    t.stop(sup)


def test_a_crash_loop_escalates_to_the_parent_which_restarts_the_subtree():
    t = ProcessTable()
    inner = Child("inner", lambda: t.start(Supervisor, SupSpec("one_for_one", (child(t, "w"),),
                                                               max_restarts=2, period=60), name="inner"))
    root = t.start(Supervisor, SupSpec("one_for_one", (inner,), max_restarts=1, period=60), name="root")
    down = []
    t.monitor(root, lambda pid, reason: down.append(reason))
    first = t.whereis("inner")
    for _ in range(3):  # two restarts allowed, the third crash escalates
        crash(t, "w")
    gevent.sleep(0.01)
    assert t.whereis("inner") not in (None, first)
    assert t.call("w", ("ping",)) == "pong" and down == []
    for _ in range(3):  # escalates again: the root's budget of one restart is spent
        crash(t, "w")
    gevent.sleep(0.01)
    assert down == [("escalated", "inner")]
    assert len(t) == 0


def test_a_child_failing_at_start_up_halts_the_supervisor_with_its_name():
    t = ProcessTable()
    spec = SupSpec("one_for_one", (child(t, "good"), child(t, "store", "permanent", "fail")))
    with pytest.raises(StartFailed, match="child store failed to start.*cannot open my store"):
        t.start(Supervisor, spec, name="sup")
    assert len(t) == 0  # the child started before it was stopped again


def test_adopted_children_are_stopped_with_their_supervisor_and_never_restarted():
    t = ProcessTable()
    sup = t.start(Supervisor, SupSpec("one_for_one", ()), name="sessions")
    procs = [Process(t, Worker, (), entity=i) for i in range(3)]
    for p in procs:
        adopt(t, sup, p)
        p.start()
    gevent.sleep(0)
    assert len(children(t, sup)) == 3
    t.call(procs[0].pid, ("ping",))
    with pytest.raises(ProcessDead):
        t.call(procs[0].pid, ("crash",))
    gevent.sleep(0)
    assert len(children(t, sup)) == 2
    t.stop(sup)
    assert len(t) == 0


def test_calls_to_a_dead_or_unknown_process_fail_fast():
    t = ProcessTable()
    pid = t.start(Worker)
    t.stop(pid)
    with pytest.raises(ProcessDead):
        t.call(pid, ("ping",), timeout=60)
    with pytest.raises(ProcessDead):
        t.call("nobody", ("ping",), timeout=60)


def test_factory_dispatch_is_stable_by_entity_or_least_loaded():
    t = ProcessTable()
    f = Factory(t, "w", Worker, 4)
    sup = t.start(Supervisor, SupSpec("one_for_one", tuple(f.children())))
    assert f.pick("alice") is f.pick("alice")
    assert len({f.pick(f"u{i}").index for i in range(100)}) == 4
    pool = Factory(t, "pool", Worker, 3, policy="least_loaded")
    pool.slots[0].load, pool.slots[1].load = 2, 0
    pool.slots[2].load = 1
    assert pool.pick().index == 1
    assert f.call("alice", ("ping",)) == "pong"
    t.stop(sup)


def test_registry_where_names_shard_worker_and_the_live_pid():
    t = ProcessTable()
    industry = Industry(t, "store", 3, Worker, paths=["/a", "/b", "/c"])
    reg = ShardRegistry()
    reg.add(industry)
    sup = t.start(Supervisor, SupSpec("one_for_one", tuple(industry.children())))
    place = reg.where("store", "alice")
    assert place["pid"] == industry.slot("alice").pid and t.lookup(place["pid"]).kind == "store"
    assert place["path"] == ["/a", "/b", "/c"][place["shard"]]
    with pytest.raises(UnknownKind, match="known: store"):
        reg.where("nothing", "alice")
    with pytest.raises(ShardDown):  # a shard that never published anything
        industry.slot("alice").resource(0)
    t.stop(sup)
