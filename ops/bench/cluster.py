"""``python3 -m ops.bench cluster --nodes 2``: what a message costs when it crosses nodes.

The same users twice: on ``--nodes`` nodes joined through a redis-server, each
user connected to their home node and half of the conversations pairing users
homed on different nodes (``--cross``), at each offered rate R; and on one plain
node (no Redis, every message same-node) at R / nodes, the load each node of the
cluster carries (CPU per message falls as a node's rate rises: compared at equal
load per node). One load generator process per node. Per step: delivered msgs/s, ✓ and end-to-end
p50/p99, and the CPU seconds each node and Redis spent, per delivered message
(CPU time is the figure that extrapolates: on this 2-core machine nodes, Redis
and the load generators share the cores, unpinned). From those:

* a cross-node message's CPU = (CPU per message of the cluster run - (1 - cross)
  x the single node's at the same load per node) / cross, summed over the nodes and
  Redis, and its ratio to a same-node message;
* how many nodes at their peak one Redis core serves: 1 s of Redis CPU over
  (Redis CPU per cross-node message x cross-node msgs/s of one node at its peak).
"""
import json
import os
import sys
import tempfile
import time

import click

from whatsup.testing import LocalCluster, RedisServer, ServerProcess

from .scenarios import merge_traffic
from .targets import SERVER_SETTINGS, Workers, cpu_seconds
from . import report

WINDOW = 64


def pairs(names_by_node, cross):
    """(user, peer) per node: the first ``cross`` share of each node's users pair with the same
    index on the next node, the rest among themselves."""
    nodes = list(names_by_node)
    m = len(next(iter(names_by_node.values())))
    k = int(m * cross) // 2 * 2
    out = {n: [] for n in nodes}
    for i, node in enumerate(nodes):
        users, other = names_by_node[node], names_by_node[nodes[(i + 1) % len(nodes)]]
        prev = names_by_node[nodes[i - 1]]
        for j in range(m):
            if j < k and len(nodes) > 1:
                # j even: writes to the next node; j odd: to the previous one (every user also receives)
                out[node].append([users[j], other[j] if j % 2 == 0 else prev[j]])
            else:
                base = j - k
                out[node].append([users[j], users[k + (base ^ 1)] if k + (base ^ 1) < m else users[j]])
    return out


def redis_cpu(url):
    """Redis's own CPU seconds (INFO cpu, microsecond resolution: /proc's 10 ms ticks are too coarse
    for the few milliseconds a step costs it)."""
    import redis
    info = redis.Redis.from_url(url).info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def run_target(label, servers, redis_url, assignment, rates, seconds, progress):
    """Connect every node's users through its own load generator, then one traffic step per rate."""
    rows = []
    with Workers(len(servers), sorted(os.sched_getaffinity(0))) as workers:
        workers.call([{"op": "connect", "target": "whatsup", "address": srv.address, "users": assignment[name]}
                      for name, srv in servers.items()])
        for rate in rates:
            progress(f"{label}: {rate} msgs/s for {seconds}s")
            pids = {name: srv.proc.pid for name, srv in servers.items()}
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            if redis_url:
                before["redis"] = redis_cpu(redis_url)
            answers = workers.call({"op": "traffic", "rate": rate / len(servers), "seconds": seconds,
                                    "window": WINDOW})
            after = {k: cpu_seconds(p) for k, p in pids.items()}
            if redis_url:
                after["redis"] = redis_cpu(redis_url)
            step = merge_traffic(answers)
            delivered = max(1, step["delivered"])
            cpu = {k: round(after[k] - before[k], 4) for k in before}
            rows.append({"target": label, "rate": rate, "sent": step["sent"], "delivered": step["delivered"],
                         "delivered_per_s": round(step["delivered_in_time"] / seconds, 1),
                         "backlog": step["backlog"], "errors": step["errors"],
                         "e2e": step["lat"]["e2e"], "sent_tick": step["lat"]["sent"],
                         "cpu_seconds": cpu,
                         "cpu_us_per_msg": {k: round(v / delivered * 1e6, 1) for k, v in cpu.items()},
                         "cpu_us_per_msg_total": round(sum(cpu.values()) / delivered * 1e6, 1)})
    return rows


def derive(single, multi, cross, nodes):
    """Per rate: a cross-node message's CPU and its ratio to a same-node one; Redis per cross msg."""
    out = []
    for one, row in zip(single, multi):  # the single node at rate / nodes: the same load per node
        same = one["cpu_us_per_msg_total"]
        crossing = (row["cpu_us_per_msg_total"] - (1 - cross) * same) / cross
        redis_per_cross = row["cpu_us_per_msg"].get("redis", 0.0) / cross
        node_cross_rate = row["delivered_per_s"] * cross / nodes  # cross msgs/s one node handles here
        out.append({"rate": row["rate"], "same_node_us": same, "cross_node_us": round(crossing, 1),
                    "ratio": round(crossing / same, 2) if same else None,
                    "redis_us_per_cross_msg": round(redis_per_cross, 1), "node_cross_msgs_per_s": node_cross_rate})
    return out


@click.command("cluster", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(2), help="nodes of the cluster run")
@click.option("--users", default=400, show_default=True, help="users (and connections) in all")
@click.option("--rates", default="1000,2000,3000,4000", show_default=True,
              help="offered msgs/s to the cluster in all, comma-separated (the single node gets rate / nodes)")
@click.option("--seconds", default=8.0, show_default=True, help="seconds per step")
@click.option("--cross", default=0.5, show_default=True, help="share of the conversations that cross nodes")
@click.option("--out", default="bench-cluster.json", show_default=True, help="where the JSON record goes")
def cluster(nodes, users, rates, seconds, cross, out):
    """1 node vs NODES nodes: msgs/s, latency and CPU per message on each node and in Redis."""
    rates = [int(r) for r in rates.split(",")]
    progress = (lambda s: click.echo(s, err=True))
    per_node = users // nodes // 4 * 4
    with tempfile.TemporaryDirectory(prefix="whatsup-bench-cluster-") as work:  # the data dirs go too
        started = time.time()
        redis = RedisServer(os.path.join(work, "redis")).start()
        names = [f"n{i}@localhost" for i in range(nodes)]
        cl = LocalCluster(os.path.join(work, "cluster"), redis, names, 12 * nodes, SERVER_SETTINGS)
        homed = {n: cl.homed(n, "u", per_node) for n in names}
        assignment = pairs(homed, cross)
        try:
            single = ServerProcess(os.path.join(work, "single"), SERVER_SETTINGS)
            os.makedirs(single.dir, exist_ok=True)
            single.start()
            try:
                flat = [p for n in names for p in assignment[n]]
                rows1 = run_target("1 node", {"single": single}, None, {"single": flat},
                                   [r // nodes for r in rates], seconds, progress)
            finally:
                single.stop()
            cl.start()
            rows2 = run_target(f"{nodes} nodes", cl.nodes, redis.url, assignment, rates, seconds, progress)
        finally:
            for srv in cl.nodes.values():
                srv.stop()
            redis.stop()
    derived = derive(rows1, rows2, cross, nodes)
    for row in rows1 + rows2:
        e2e = row["e2e"] or {}
        click.echo(f"{row['target']:>8} {row['rate']:>6}/s  delivered {row['delivered_per_s']:>8}/s  "
                   f"e2e p50 {e2e.get('p50')} p99 {e2e.get('p99')} ms  CPU µs/msg {row['cpu_us_per_msg']} "
                   f"= {row['cpu_us_per_msg_total']}  errors {row['errors']}")
    for d in derived:
        click.echo(f"at {d['rate']}/s: same-node {d['same_node_us']} µs, cross-node {d['cross_node_us']} µs "
                   f"(x{d['ratio']}); Redis {d['redis_us_per_cross_msg']} µs per cross-node message")
    record = {"started": started, "command": " ".join(sys.argv), "machine": report.machine(),
              "versions": report.versions(), "nodes": nodes, "users": per_node * nodes, "cross": cross,
              "seconds": seconds, "placement": "unpinned: nodes, redis-server and the load generators share "
              f"{os.cpu_count()} cores", "rows": rows1 + rows2, "derived": derived}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    click.echo(f"wrote {out}")
