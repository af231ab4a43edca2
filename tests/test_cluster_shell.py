"""The operator shell across a cluster (README, "The operator shell"): any node's process table,
stats and sessions from any node, and a rolling hot reload under cross-node traffic. One cluster
of three real nodes and a real redis-server serves every test here (the suite's time budget)."""
import json
import os
import subprocess

import pytest

from reloading import Chatter, copy_package, upgrade
from social import wait_for
from whatsup.testing import LocalCluster, RedisServer

SESSION = "whatsup.c2s.session"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes running a copy of the package (the reload test rewrites it); the hub-blocked
    gate of make_server, for the whole module."""
    base = tmp_path_factory.mktemp("cluster_shell")
    pkg = copy_package(base / "pkg")
    redis = RedisServer(base / "redis").start()
    cl = LocalCluster(base / "cluster", redis, env={"PYTHONPATH": str(pkg), "PYTHONSAFEPATH": "1"})
    cl.package = pkg
    try:
        yield cl.start()
    finally:
        cl.stop()
        redis.kill()
    blocked = [report for srv in cl.nodes.values() for report in srv.blocking_reports()]
    assert not blocked, "the hub was blocked:\n" + "\n".join(blocked)


@pytest.fixture(scope="module")
def users(cluster):
    """A sender and a receiver connected to each node, every sender writing to a receiver on the
    next node; each user homed on yet another node, so every message crosses nodes."""
    names = cluster.names
    pairs = []
    for i, node in enumerate(names):
        sender = cluster.homed(names[(i + 1) % 3], f"s{i}-")[0]
        receiver = cluster.homed(names[(i + 2) % 3], f"r{i}-")[0]
        pairs.append((node, sender, receiver))
    cluster[names[0]].register(*(u for _, s, r in pairs for u in (s, r)))
    return pairs


def ctl(node, *args):
    """``whatsupctl`` against ``node``'s control socket."""
    return subprocess.run([os.path.join(ROOT, "bin", "whatsupctl"), "--data-dir", node.data_dir, *args],
                          capture_output=True, text=True, timeout=60)


def sessions_on(sh, ask):
    return ask(sh, "sorted(r['who'] for r in ps(kind='session'))")


def test_any_nodes_table_stats_and_sessions_answer_from_any_node(cluster, users, ask):
    a, b, c = cluster.names
    clients = [cluster[node].client(user) for node, user, _ in users]
    try:
        with cluster[a].shell() as sh:
            for node, user, _ in users:
                with cluster[node].shell() as there:
                    local = ask(there, "[(repr(r['pid']), r['who'], list(r)) for r in ps(kind='session')]")
                remote = ask(sh, f"[(repr(r['pid']), r['who'], list(r)) for r in ps(kind='session', node={node!r})]")
                assert remote == local and [who for _, who, _ in remote] == [user]
                # the same table either way; uptime (0.1 s steps) may tick between the two asks
                assert ask(sh, f"(lambda a, b: [dict(r, uptime=None) for r in a] == [dict(r, uptime=None) for r in b])"
                               f"(ps(kind='session', node={node!r}), rpc({node!r}, 'ps', 'session'))")
                pid = ask(sh, f"repr(where('user', {user!r})['pid'])")
                assert pid.startswith(f"<{node}.")
                # a user's name finds their session wherever it runs: its info and mailbox, asked there
                assert ask(sh, f"repr(i({user!r})['pid'])") == pid
                assert ask(sh, f"mailbox({user!r})") == []
            everywhere = ask(sh, "[(repr(r['pid']), r['who']) for r in ps(kind='session', node='all')]")
            assert [(pid.split(".")[0][1:], who) for pid, who in everywhere] == [(n, u) for n, u, _ in users]
            assert ask(sh, "len(top(2, node='all'))") == 2
            every = ask(sh, "(lambda s: {k: (v['connections'] if isinstance(v, dict) else v) for k, v in s.items()})"
                            "(stats(0.2, node='all'))")
            assert every == {"total": 3, a: 1, b: 1, c: 1}
            assert ask(sh, f"stats(0.1, node={b!r})['node']") == b
            total = ask(sh, "(lambda s: (s['total']['processes']['session'], s['total']['online_users'], "
                            "'node' in s['total'], 'metrics' in s['total']))(stats(0.1, node='all'))")
            assert total == (3, 3, False, False)
        every = ctl(cluster[b], "--json", "stats", "--interval", "0.1", "--all-nodes")
        assert every.returncode == 0, every.stderr
        figures = json.loads(every.stdout)
        assert (figures["total"]["connections"], sorted(figures)) == (3, sorted(["total", a, b, c]))
    finally:
        for client in clients:
            client.close()


def test_a_rolling_reload_under_cross_node_traffic_swaps_every_node_and_drops_nothing(cluster, users, ask):
    names = cluster.names
    senders = {user: cluster[node].client(user) for node, user, _ in users}
    receivers = {user: cluster[names[(names.index(node) + 1) % 3]].client(user) for node, _, user in users}
    shells = {node: cluster[node].shell() for node in names}
    try:
        for sh in shells.values():  # only this test's sessions (the last test's closed)
            wait_for(lambda: len(sessions_on(sh, ask)) == 2, "two sessions on every node")
        before = {node: (ask(sh, "node.counters['disconnections']"), sessions_on(sh, ask),
                         ask(sh, "sorted(repr(r['pid']) for r in ps(kind='session'))")) for node, sh in shells.items()}
        assert all("vsn" not in c.ping() for c in (*senders.values(), *receivers.values()))
        chatters = [Chatter(senders[s], to=r) for _, s, r in users]
        for chatter in chatters:
            chatter.start()
            chatter.wait_for(10)
        upgrade(cluster.package / "whatsup" / "c2s" / "session.py")
        rolled = ask(shells[names[0]], f"[(r['node'], r['outcome'], r['swapped'], r['kept_old']) "
                                       f"for r in reload({SESSION!r}, nodes='all')]")
        assert [(node, outcome, kept) for node, outcome, _, kept in rolled] == [(n, "reloaded", 0) for n in names]
        assert all(swapped >= 2 for _, _, swapped, _ in rolled), rolled  # each node's two sessions at least
        for chatter in chatters:
            chatter.wait_for(len(chatter.ids) + 10)  # the same connections go on, on the new code
            chatter.stop.set()
            chatter.join(30)
            assert chatter.error is None
        # every connection of every node runs the new code: a node that swapped nothing fails here
        assert {user: c.ping().get("vsn") for user, c in (*senders.items(), *receivers.items())} == \
            {user: 2 for user in (*senders, *receivers)}
        for node, sh in shells.items():
            assert (ask(sh, "node.counters['disconnections']"), sessions_on(sh, ask),
                    ask(sh, "sorted(repr(r['pid']) for r in ps(kind='session'))")) == before[node]
        for chatter, (_, sender, receiver) in zip(chatters, users):
            got = []
            while len(got) < len(chatter.ids):
                frame = receivers[receiver].recv(10)
                assert frame is not None, f"{receiver} got {len(got)} of {len(chatter.ids)}"
                if frame["type"] == "msg":
                    got.append(frame["id"])
            assert got == chatter.ids  # each ✓'d message once, in order
    finally:
        for client in (*senders.values(), *receivers.values(), *shells.values()):
            client.close()


def test_a_rolling_reload_stops_at_the_first_node_that_refuses_it(cluster, ask):
    a, b, c = cluster.names
    out = subprocess.run([os.path.join(ROOT, "ops", "deploy.sh"), "--socket", cluster[b].shell_socket,
                          "--all-nodes", "whatsup.routing.sm"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cannot be reloaded" in out.stdout and "stopped after " + a in out.stdout
    out = ctl(cluster[c], "reload", "whatsup.routing.sm", "--all-nodes")
    assert out.returncode == 1 and "reload_failed" in out.stderr and "not tried" in out.stderr, out.stderr
    with cluster[b].shell() as sh:
        rows = ask(sh, "[(r['node'], r['outcome']) for r in reload('whatsup.routing.sm', nodes='all')]")
        assert rows == [(a, "refused"), (b, "not tried"), (c, "not tried")]
