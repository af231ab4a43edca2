"""A node cut off from Redis for longer than its lease (docs/RELIABILITY.md, "A cluster"): what
would cross nodes fails at once with store_failed, local traffic goes on, and it rejoins when
Redis answers again. Real nodes; the real redis-server stopped with SIGSTOP."""
import pytest

from social import wait_for
from whatsup.client import ServerError

#: Writes and requests to other nodes would wait a minute; the clients wait 15 s: an answer
#: within that is the cut-off node's own, not a timeout's.
SLOW = {"cluster.retry_for": 60.0, "cluster.request_timeout": 60.0}


def test_a_node_cut_off_from_redis_refuses_what_crosses_nodes_at_once_and_serves_what_it_homes(make_cluster, ask):
    cl = make_cluster(settings=SLOW)
    a, b, c = cl.names
    alice, ann = cl.homed(a, "alice", 2)
    bob, bert = cl.homed(b, "bob", 2)
    cl[b].register(alice, ann, bob, bert)
    with cl[a].client(alice, timeout=15) as al, cl[a].client(ann, timeout=15) as an, \
            cl[b].client(bob, timeout=15) as bo:
        al.send(bob, "before", id="m1")
        assert [f["id"] for f in bo.drain(1.0) if f["type"] == "msg"] == ["m1"]
        watching = cl[a].shell()  # a monitor, on a, of bob's session on b
        bob_pid = ask(watching, f"repr(where('user', {bob!r})['pid'])")
        watching.run(f"downs = []; table.monitor(where('user', {bob!r})['pid'], lambda p, r: downs.append(r))")
        cl.redis.pause()
        try:
            wait_for(lambda: "is cut off" in cl[a].log(), "a counts itself cut off", timeout=30)
            wait_for(lambda: ask(watching, "downs") == ["noconnection"], f"a's monitor of {bob_pid}: noconnection")
            watching.close()
            with pytest.raises(ServerError, match="cut off") as refused:
                al.send(bob, "during", id="m2")   # bob's home is b: refused at once, retryable
            assert refused.value.code == "store_failed"
            al.send(ann, "local", id="l1")        # both homed on a, both connected to a: as ever
            assert [f["id"] for f in an.drain(1.0) if f["type"] == "msg"] == ["l1"]
            with pytest.raises(ServerError, match="store_failed"):
                cl[a].client(bert, timeout=15)    # a login a cannot verify with bert's home
            newcomer = cl.homed(b, "newcomer")[0]
            with cl[a].client(timeout=15) as nc, pytest.raises(ServerError, match="store_failed"):
                nc.register(newcomer, f"pw-{newcomer}")  # an account that would live on b
        finally:
            cl.redis.resume()
        wait_for(lambda: "renewed its lease" in cl[a].log(), "a rejoins", timeout=30)
        wait_for(lambda: cl[a].log().count(f"cluster: {b} is up") >= 2, "a counts b up again", timeout=30)
        # b was cut off too (one Redis for all): it serves a's request only once it counts a up
        wait_for(lambda: cl[b].log().count(f"cluster: {a} is up") >= 2, "b counts a up again", timeout=30)
        al.send(bob, "during", id="m2")           # the retry goes through, once
        assert [f["id"] for f in bo.drain(1.0) if f["type"] == "msg"] == ["m2"]
        with cl[a].client(bert, timeout=15) as be:
            assert be.ping()["type"] == "pong"
    with cl[a].shell() as sh:  # counted where the operator looks
        assert ask(sh, "stats(0.1)['metrics']['cluster_events_total']['detached']") >= 1
