"""Start a local cluster to try: a redis-server and N whatsupd nodes joined through it.

Each node gets its own data dir, config and log under --dir, a loopback port for
clients, and the same cluster map (cluster.toml there, shards dealt round-robin).
It prints where everything is and runs until Ctrl-C (or SIGTERM), then stops
the nodes (SIGTERM: they flush offd and give up their leases) and Redis.

    python3 ops/cluster.py --nodes 3
    python3 -m whatsup.cli.whatsup --server 127.0.0.1:PORT ...   # any node serves any user
"""
import os
import signal
import sys
import tempfile
import threading

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from whatsup.config import BY_NAME  # noqa: E402
from whatsup.testing import CLUSTER_FAST, FAST, LocalCluster, RedisServer  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nodes", default=3, show_default=True, help="whatsupd nodes")
@click.option("--shards", default=12, show_default=True, help="cluster shards dealt over the nodes")
@click.option("--dir", "directory", default=None, help="where data, configs and logs go (a temporary dir by default)")
@click.option("--fast", is_flag=True, help="cheap password hashes (scrypt N=1024), for trying and benchmarks")
def main(nodes, shards, directory, fast):
    """Run a redis-server and NODES whatsupd nodes on loopback until Ctrl-C."""
    directory = directory or tempfile.mkdtemp(prefix="whatsup-cluster-")
    redis = RedisServer(os.path.join(directory, "redis")).start()
    names = [f"n{i}@localhost" for i in range(nodes)]
    # the tests' quick leases and cheap hashes only with --fast; else the production defaults
    settings = {} if fast else {name: BY_NAME[name].default for name in (*FAST, *CLUSTER_FAST)}
    cluster = LocalCluster(directory, redis, names, shards, settings)
    try:
        cluster.start()
        click.echo(f"redis     {redis.url} (data in {redis.dir})")
        for name, srv in cluster.nodes.items():
            click.echo(f"{name:<14} clients on {srv.server}  log {srv.log_path}")
        click.echo(f"map       {cluster.map_path}\nCtrl-C stops everything.")
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(1.0):
            dead = [n for n, s in cluster.nodes.items() if s.proc.poll() is not None]
            if dead:
                click.echo(f"stopped by itself: {', '.join(dead)} (see its log)", err=True)
                break
    finally:
        for srv in cluster.nodes.values():
            srv.stop()
        redis.stop()
        click.echo(f"stopped; data kept in {directory}")


if __name__ == "__main__":
    main()
