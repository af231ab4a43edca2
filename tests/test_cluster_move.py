"""Moving cluster shards between stopped nodes (whatsup-reshard move, whatsup/cluster/move.py):
on real data dirs and a real redis-server, then with real nodes."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis

from social import take, wait_for
from whatsup.client import ServerError
from whatsup.cluster import map as cmap
from whatsup.cluster.move import HOMED, MoveError, finish, move, read_node, write_tables
from whatsup.runtime import ProcessTable
from whatsup.store.offd import Offd, shard_dir, shard_of
from whatsup.store.offd.spool import Spool
from whatsup.store.reshard import write_accounts

OPTIONS = (1 << 20, 1000, 30.0)
A, B, C = "a@x", "b@x", "c@x"
STEPS = ("prepared", "source rebuilt", "destination rebuilt", "recorded", "committed", "swapped", "swapped",
         "map written")


class Crash(Exception):
    """The tool dies here (its locks go with it, as the kernel drops a dead process's flock)."""


def make_node(data_dir, users, groups, local_shards=2):
    """A stopped node's data dir: each user with 3 queued items, an account, a block list, a privacy
    row, and every third user a companion device past its queue; the groups; two bans; an invite
    (it stays with the node)."""
    offd = os.path.join(data_dir, "offd")
    Offd(ProcessTable(), offd, local_shards, *OPTIONS).check()
    spools = [Spool(shard_dir(offd, i), *OPTIONS).open() for i in range(local_shards)]
    for n in range(3):
        for user in users:
            spools[shard_of(user, local_shards)].put(user, "msg", {"type": "msg", "body": f"{n}"},
                                                     sender="s", cid=f"{user}-{n}")
    for user in users[::3]:   # a device linked after those items: it starts past them (an A record)
        spools[shard_of(user, local_shards)].link(user, 1)
    for sp in spools:
        sp.close()
    write_accounts(os.path.join(data_dir, "accounts"), local_shards, {u: {"hash": f"h-{u}"} for u in users})
    write_tables(os.path.join(data_dir, "social.sqlite"), {
        "groups": {g: {"name": g, "members": [["u0", True]]} for g in groups},
        "blocks": {u: ["eve"] for u in users}, "privacy": {u: {"last_seen": "nobody"} for u in users},
        "bans": {u: {"reason": "spam"} for u in users[:2]}, "invites": {f"token-{data_dir[-1]}": {"uses": 1}}})


def layout(dirs):
    """{node: sorted names of everything it holds} with each user's queue."""
    out = {}
    for node, d in dirs.items():
        content = read_node(d, OPTIONS)
        out[node] = {"queues": {u: [i.cid for i in q] for u, q in content["queues"].items()},
                     "cursors": content["cursors"],
                     "accounts": sorted(content["accounts"]),
                     "tables": {t: sorted(rows) for t, rows in content["tables"].items()},
                     "left": sorted(f for f in os.listdir(d) if f.endswith((".new", ".old")) or f == "MOVING")}
    return out


@pytest.fixture
def two_nodes(tmp_path, redis_server):
    """Two stopped nodes' data dirs and their map (4 cluster shards, a: 0 1, b: 2 3, c: none yet)."""
    path = tmp_path / "cluster.toml"
    path.write_text(cmap.render(redis_server.url, 4, {A: {"shards": [0, 1]}, B: {"shards": [2, 3]},
                                                       C: {"shards": []}}))   # c: a new node
    old = cmap.load(path)
    redis.Redis.from_url(redis_server.url).set("whatsup:map", old.fingerprint())  # as the nodes did
    dirs = {A: str(tmp_path / "a"), B: str(tmp_path / "b")}
    names, gids = [f"u{i}" for i in range(16)], [f"g{i}" for i in range(16)]
    for node, d in dirs.items():
        make_node(d, [u for u in names if old.home(u) == node], [g for g in gids if old.home(g) == node])
    before = layout(dirs)

    def moving(key):   # shard 1, from a to b
        return shard_of(key, 4) == 1
    after = {A: {"queues": {u: q for u, q in before[A]["queues"].items() if not moving(u)},
                 "cursors": {u: c for u, c in before[A]["cursors"].items() if not moving(u)},
                 "accounts": [u for u in before[A]["accounts"] if not moving(u)],
                 "tables": {t: [k for k in keys if t not in HOMED or not moving(k)]
                            for t, keys in before[A]["tables"].items()}, "left": []},
             B: {"queues": {**before[B]["queues"], **{u: q for u, q in before[A]["queues"].items() if moving(u)}},
                 "cursors": {**before[B]["cursors"], **{u: c for u, c in before[A]["cursors"].items() if moving(u)}},
                 "accounts": sorted(before[B]["accounts"] + [u for u in before[A]["accounts"] if moving(u)]),
                 "tables": {t: sorted(keys + [k for k in before[A]["tables"][t] if t in HOMED and moving(k)])
                            for t, keys in before[B]["tables"].items()}, "left": []}}
    assert set(after[B]["cursors"]) - set(before[B]["cursors"])   # a companion's place moves too
    assert before[A]["accounts"] != after[A]["accounts"] and before[A]["tables"]["groups"] != after[A]["tables"]["groups"]
    return str(path), dirs, before, after


@pytest.mark.parametrize("crash", range(len(STEPS)))
def test_a_move_cut_short_at_any_step_leaves_the_old_or_the_new_layout_whole(two_nodes, redis_server, crash):
    map_path, dirs, before, after = two_nodes
    old_map = open(map_path).read()
    old_fp, new_fp = cmap.load(map_path).fingerprint(), cmap.load(map_path).moved([1], B).fingerprint()
    steps = []

    def step(name):
        steps.append(name)
        if len(steps) == crash + 1:
            raise Crash(name)
    with pytest.raises(Crash):
        move(map_path, [1], B, dirs, OPTIONS, say=lambda line: None, step=step)
    assert steps[-1].startswith(STEPS[crash])
    # a node of either side refuses to start meanwhile
    with pytest.raises(Exception, match="unfinished whatsup-reshard move"):
        Offd(ProcessTable(), os.path.join(dirs[A], "offd"), 2, *OPTIONS).check()
    said = []
    committed = crash >= STEPS.index("recorded")   # the new map in Redis
    if crash % 2:   # the operator runs the same move again: it finishes (or redoes) it
        move(map_path, [1], B, dirs, OPTIONS, say=said.append)
        assert [line for line in said if line.startswith(("completed", "rolled back"))][0].startswith(
            "completed" if committed else "rolled back")
    else:           # or asks only to finish: the old layout back, or the new one
        finish(map_path, dirs, say=said.append)
        recorded = redis.Redis.from_url(redis_server.url).get("whatsup:map").decode()
        if not committed:
            assert said == [said[0]] and said[0].startswith("rolled back") and recorded == old_fp
            assert layout(dirs) == before and open(map_path).read() == old_map
            move(map_path, [1], B, dirs, OPTIONS, say=lambda line: None)   # and done again
        else:
            assert said[-1].startswith("completed")
    assert layout(dirs) == after
    assert redis.Redis.from_url(redis_server.url).get("whatsup:map").decode() == new_fp
    assert cmap.load(map_path).fingerprint() == new_fp
    Offd(ProcessTable(), os.path.join(dirs[B], "offd"), 2, *OPTIONS).check()


@pytest.mark.parametrize("until,delay", [("prepared", 0.0), ("prepared", 0.1), ("committed", 0.0)])
def test_a_move_killed_by_kill_9_leaves_one_layout_whole_once_finished(two_nodes, until, delay):
    """The tool itself killed -9 while it works: ``delay`` s after its journal says ``until``
    (before the commit: rolled back by the next run; after: completed)."""
    map_path, dirs, before, after = two_nodes
    tool = [sys.executable, "-m", "whatsup.cli.reshard", "move", "--map", map_path,
            "--data-dir", f"{A}={dirs[A]}", "--data-dir", f"{B}={dirs[B]}"]
    proc = subprocess.Popen([*tool, "--shards", "1", "--to", B], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal, deadline = os.path.join(dirs[A], "MOVING"), time.monotonic() + 30
    while proc.poll() is None:
        try:
            with open(journal) as f:
                if f'"{until}"' in f.read():
                    break
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the move never got there"
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done = subprocess.run([*tool, "--finish"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert layout(dirs) == after if until == "committed" else layout(dirs) in (before, after)
    if layout(dirs) == before:
        assert cmap.load(map_path).owner[1] == A
        assert subprocess.run([*tool, "--shards", "1", "--to", B], timeout=60).returncode == 0
    assert layout(dirs) == after and cmap.load(map_path).owner[1] == B


def test_shards_move_to_a_new_node_whose_data_dir_is_empty(two_nodes, tmp_path):
    map_path, dirs, before, after = two_nodes
    dirs = {**dirs, C: str(tmp_path / "c")}
    move(map_path, [1], C, dirs, OPTIONS, say=lambda line: None)
    got = layout({A: dirs[A], C: dirs[C]})
    assert got[A] == after[A]

    def moved(keys):
        return {k: keys[k] for k in keys if shard_of(k, 4) == 1} if isinstance(keys, dict) else \
            [k for k in keys if shard_of(k, 4) == 1]
    assert got[C] == {"queues": moved(before[A]["queues"]), "cursors": moved(before[A]["cursors"]),
                      "accounts": moved(before[A]["accounts"]), "left": [],
                      "tables": {t: moved(keys) for t, keys in before[A]["tables"].items() if t in HOMED}}
    assert got[C]["accounts"] and cmap.load(map_path).owner == [A, C, B, B]
    Offd(ProcessTable(), os.path.join(dirs[C], "offd"), 4, *OPTIONS).check()   # as the node opens it


def test_a_move_is_refused_while_a_node_lives_or_redis_records_another_map(two_nodes, redis_server):
    map_path, dirs, before, _ = two_nodes
    r = redis.Redis.from_url(redis_server.url)
    r.set("whatsup:lease:d@x", 1)   # not a node of this map: no matter
    r.set(f"whatsup:lease:{A}", 1, px=60000)
    with pytest.raises(MoveError, match=f"{A} is live"):
        move(map_path, [1], B, dirs, OPTIONS, say=lambda line: None)
    r.delete(f"whatsup:lease:{A}")
    r.xadd(f"whatsup:inbox:{A}", {"x": "1"})
    with pytest.raises(MoveError, match=f"1 entries wait in {A}'s inbox"):
        move(map_path, [1], B, dirs, OPTIONS, say=lambda line: None)
    r.delete(f"whatsup:inbox:{A}")
    r.set("whatsup:map", "another")
    with pytest.raises(MoveError, match="Redis records another map"):
        move(map_path, [1], B, dirs, OPTIONS, say=lambda line: None)
    said = []
    move(map_path, [2, 3], B, dirs, OPTIONS, say=said.append)
    assert said == [f"shards [2, 3] belong to {B}: nothing to move"]
    assert layout(dirs) == before


def test_users_moved_to_another_node_get_every_queued_message_once_and_the_old_map_is_refused(
        make_cluster, tmp_path, ask):
    cl = make_cluster()
    a, b, c = cl.names
    sam, eve = cl.homed(c, "sam")[0], cl.homed(b, "eve")[0]
    cl[a].register(sam, eve)
    with cl[a].client(sam) as sa:   # a group created on a lives on a
        names = [f"member{i}" for i in range(60)]
        gid = None
        while gid is None or cl.map.home(gid) != a:
            gid = sa.group_create("club", [])
        moving = {shard_of(gid, 12), next(s for s in cl.map.nodes[a]["shards"] if s != shard_of(gid, 12))}
        movers = [u for u in names if shard_of(u, 12) in moving][:2]
        keeper = next(u for u in names if cl.map.home(u) == a and shard_of(u, 12) not in moving)
        cl[b].register(*movers, keeper)
        with cl[c].client(movers[0]) as m0:
            m0.block(eve)
        sa.group_add(gid, [*movers, keeper])
        sa.send(None, "g1", id="g1", group=gid)
        for user in [*movers, keeper]:
            for i in range(3):
                sa.send(user, f"to {user} {i}", id=f"{user}-{i}")
    for name in cl.names:
        assert cl[name].stop() == 0
    tool = [sys.executable, "-m", "whatsup.cli.reshard", "move", "--map", cl.map_path, "--to", b,
            "--shards", ",".join(map(str, sorted(moving))), "--data-dir", f"{a}={cl[a].data_dir}",
            "--data-dir", f"{b}={cl[b].data_dir}"]
    cl[c].start()   # one node of the cluster lives: refused
    refused = subprocess.run(tool, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and f"{c} is live" in refused.stderr
    cl[c].stop()
    old_map = tmp_path / "old.toml"
    shutil.copy(cl.map_path, old_map)
    done = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the movers' accounts; each queue: the "added" event, g1 and 3 messages; the group, a block list
    assert f"from {a} to {b}: 2 accounts, 10 queued items, 2 table rows, verified" in done.stdout
    cl.map = cmap.load(cl.map_path)
    assert [cl.map.home(x) for x in (*movers, gid, keeper)] == [b, b, b, a]
    assert [f for f in os.listdir(cl[a].data_dir) if f.endswith((".old", ".new")) or f == "MOVING"] == []
    held = {n: read_node(cl[n].data_dir, OPTIONS) for n in (a, b)}   # the source keeps none of it
    for user in movers:
        assert user not in held[a]["accounts"] and user not in held[a]["queues"]
        assert len(held[b]["queues"][user]) == 5 and user in held[b]["accounts"]
    assert gid not in held[a]["tables"]["groups"] and gid in held[b]["tables"]["groups"]
    assert movers[0] not in held[a]["tables"]["blocks"] and held[b]["tables"]["blocks"][movers[0]] == [eve]
    assert len(held[a]["queues"][keeper]) == 5 and keeper in held[a]["accounts"]
    for name in cl.names:
        cl[name].start()
    cl.joined()
    for name in cl.names:   # each node learns the names homed on the others as it sees them up
        with cl[name].shell() as sh:
            wait_for(lambda: ask(sh, "sorted(node.homes.learnt)") == sorted(set(cl.names) - {name}),
                     f"{name} learning the users of the others")
    with cl[c].shell() as sh:   # until then a name homed there is not "no such user" but "retry"
        ask(sh, f"node.homes.learnt.discard({b!r}); node.accounts.users.discard({movers[0]!r})")
        with pytest.raises(ServerError, match="store_failed"):
            cl[c].client(movers[0])
        ask(sh, f"node.homes.learnt.add({b!r}); node.accounts.users.add({movers[0]!r})")
    # a node started with the old map refuses, in one line
    out = cl.try_start(a, old_map)
    assert out.returncode != 0 and "differs from the one recorded in Redis" in out.stderr
    # every queued message exactly once, logging in on any node
    for user, first, again in [(movers[0], a, c), (movers[1], c, b), (keeper, b, a)]:
        with cl[first].client(user) as cli:
            assert cli.last_login["queued"] == 5
            got = take(cli, 5, ("msg", "group_event"))
            assert [f["id"] if f["type"] == "msg" else f["event"] for f in got] == \
                ["added", "g1"] + [f"{user}-{i}" for i in range(3)]
        with cl[again].client(user) as cli:
            assert cli.last_login["queued"] == 0
            assert cli.drain(0.3) == []
    with cl[c].client(movers[0]) as m0:   # the block list and the group moved with their homes
        assert m0.blocked() == [eve]
        assert sorted(m0.group_info(gid)["members"]) == sorted([sam, *movers, keeper])
        m0.send(None, "g2", id="g2", group=gid)
    with cl[a].client(keeper) as k:
        assert [m["id"] for m in take(k, 1, ("msg",))] == ["g2"]
