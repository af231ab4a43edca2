"""What ``whatsup-reshard move`` costs: the time, CPU and memory to move shards between two nodes.

    python3 -m ops.move_figures [--users 20000 --items 10 --shards 12]

Two stopped nodes' data dirs are made in a temporary directory (each holding
``--users`` users homed on it with ``--items`` queued messages each, their
accounts, a group per 10 users), with a real redis-server on loopback; then
half of node a's cluster shards are moved to node b (whatsup/cluster/move.py:
both nodes' stores read, rebuilt, read back and compared, the map swapped), by
``whatsup-reshard move`` in a process of its own. Prints one line: what moved,
the tool's wall and CPU seconds, the items rewritten per second and its peak
RSS. Everything is removed at the end.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from whatsup.cluster import map as cmap
from whatsup.cluster.move import write_tables
from whatsup.runtime import ProcessTable
from whatsup.store.offd import Offd, shard_dir, shard_of
from whatsup.store.offd.spool import Spool
from whatsup.store.reshard import write_accounts
from whatsup.testing import RedisServer

OPTIONS = (64 << 20, 100000, 30.0)  # offd.segment_bytes, max_queue, expiry_days
LOCAL_SHARDS = 4


def make_node(data_dir, users, items, groups):
    """A stopped node's data dir: ``items`` queued messages for each of ``users``, their accounts,
    ``groups`` in social.sqlite."""
    offd = os.path.join(data_dir, "offd")
    Offd(ProcessTable(), offd, LOCAL_SHARDS, *OPTIONS).check()
    spools = [Spool(shard_dir(offd, i), *OPTIONS).open() for i in range(LOCAL_SHARDS)]
    for n in range(items):
        for user in users:
            spools[shard_of(user, LOCAL_SHARDS)].put(user, "msg", {"type": "msg", "body": "x" * 60},
                                                     sender="sender", cid=f"{user}-{n}")
    for sp in spools:
        sp.flush()
        sp.close()
    write_accounts(os.path.join(data_dir, "accounts"), LOCAL_SHARDS,
                   {u: {"hash": "scrypt$" + "0" * 100, "created": 0} for u in users})
    write_tables(os.path.join(data_dir, "social.sqlite"),
                 {"groups": {g: {"name": g, "members": [[u, False] for u in users[:10]]} for g in groups}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20000, help="users homed on each node")
    ap.add_argument("--items", type=int, default=10, help="queued items per user")
    ap.add_argument("--shards", type=int, default=12, help="cluster shards (half on each node)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="whatsup-move-") as tmp:
        redis = RedisServer(os.path.join(tmp, "redis")).start()
        try:
            nodes = {"a@x": {"shards": list(range(0, args.shards, 2))},
                     "b@x": {"shards": list(range(1, args.shards, 2))}}
            path = os.path.join(tmp, "cluster.toml")
            with open(path, "w") as f:
                f.write(cmap.render(redis.url, args.shards, nodes))
            old = cmap.load(path)
            dirs = {}
            for node in nodes:
                dirs[node] = os.path.join(tmp, node[0])
                names, i = [], 0
                while len(names) < args.users:
                    if old.home(f"user{i}") == node:
                        names.append(f"user{i}")
                    i += 1
                gids = [f"g{j}" for j in range(args.users // 5) if old.home(f"g{j}") == node]
                make_node(dirs[node], names, args.items, gids)
            moving = nodes["a@x"]["shards"][::2]
            tool = [sys.executable, "-m", "whatsup.cli.reshard", "move", "--map", path, "--to", "b@x",
                    "--shards", ",".join(map(str, moving)), *[f"--data-dir={n}={d}" for n, d in dirs.items()]]
            started = time.monotonic()
            out = subprocess.run(tool, capture_output=True, text=True, timeout=3600)
            wall = time.monotonic() - started
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            redis.kill()
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    moved = next(line for line in out.stdout.splitlines() if line.startswith("moved"))
    rewritten = 2 * args.users * args.items
    print(f"{moved} ({len(moving)} of {args.shards} shards, {rewritten} items on the two nodes in all): "
          f"{wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU, {rewritten / wall:,.0f} items "
          f"rewritten/s; the tool's peak RSS {usage.ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
