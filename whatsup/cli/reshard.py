"""``whatsup-reshard``: move a stopped node's offd spools and accounts from M to N shards, or
(``move``) cluster shards from one stopped node to another (docs/ADMIN.md, "Moving shards").

    whatsup-reshard --data-dir /srv/whatsup --offd-shards 8 --accounts-shards 8
    whatsup-reshard move --map etc/cluster.toml --shards 3,9 --to b@host \
        --data-dir a@host=/srv/a --data-dir b@host=/srv/b

Counts not given come from ``--config``. The data dir records the counts it was
written with, and whatsupd reads them from there unless its config names others,
so a node that needed no config file before a reshard needs none after it. The
tool refuses to run while a whatsupd holds the data dir, verifies every moved
item and account before swapping, and can be run again after an interruption
(it rolls the half-done swap back first). See whatsup/store/reshard.py for the plan,
and whatsup/cluster/move.py for the move's.
"""
import os

import click

from ..cluster import move as moving
from ..cluster.engine import UNREACHABLE
from ..cluster.map import MapError
from ..store.datadir import DataDirBusy
from ..store.reshard import ReshardError, reshard
from . import load_config, setting_option, version_option
from .progress import Progress

REFUSED = (DataDirBusy, ReshardError, MapError, *UNREACHABLE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="the node's TOML configuration (data dir and, if set there, the wanted shard counts)")
@setting_option("--data-dir", "server.data_dir")
@click.option("--offd-shards", type=click.IntRange(1), help="new offd shard count (default: the config's)")
@click.option("--accounts-shards", type=click.IntRange(1),
              help="new account shard count (default: the config's)")
@version_option("whatsup-reshard")
@click.pass_context
def main(ctx, config_path, data_dir, offd_shards, accounts_shards):
    """Move offd and account data to new shard counts, with the server stopped; or, with the move
    command, cluster shards from one stopped node to another (whatsup-reshard move -h)."""
    os.umask(0o077)  # what it writes holds password hashes and messages (whatsup/store/datadir.py, secure)
    if ctx.invoked_subcommand is not None:
        return
    cfg = load_config(config_path, {"server.data_dir": data_dir, "offd.shards": offd_shards,
                                    "accounts.shards": accounts_shards})
    directory = os.path.abspath(cfg.data_dir)
    if not os.path.isdir(directory):
        raise click.ClickException(f"no data dir at {directory}")
    wanted = {"offd": cfg.offd.shards, "accounts": cfg.accounts.shards}
    if not any(wanted.values()):
        raise click.ClickException("give the new counts: --offd-shards N and/or --accounts-shards N")
    options = (cfg.offd.segment_bytes, cfg.offd.max_queue, cfg.offd.expiry_days)
    progress = Progress()
    try:
        reshard(directory, wanted["offd"], wanted["accounts"], options, say=click.echo,
                progress=progress.step)
    except REFUSED as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.close()
    done = " and ".join(f"{store}.shards = {n}" for store, n in wanted.items() if n)
    click.echo(f"done: {directory} now has {done}; whatsupd reads the counts from the data dir")


def node_dir(ctx, param, values):
    """``--data-dir NODE=PATH`` (repeated) as {node: path}."""
    out = {}
    for value in values:
        node, sep, path = value.partition("=")
        if not sep or not node or not path:
            raise click.BadParameter(f"{value!r} is not NODE=PATH")
        out[node] = path
    return out


def shard_list(ctx, param, value):
    try:
        return sorted({int(s) for s in value.split(",") if s.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of shard numbers like 3,9") from None


@main.command("move")
@click.option("--map", "map_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="the cluster map every node reads (etc/cluster.toml); rewritten with the new placement")
@click.option("--shards", callback=shard_list, default="", help="the cluster shards to move, e.g. 3,9")
@click.option("--to", "dest", help="the node that gets them")
@click.option("--data-dir", "dirs", multiple=True, callback=node_dir, metavar="NODE=PATH",
              help="the data dir of the node giving the shards and of the one getting them (repeat)")
@click.option("--print-map", is_flag=True, help="print the new map instead of writing it to --map")
@click.option("--finish", is_flag=True,
              help="only complete or roll back an interrupted move (every run does this first)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="a node's whatsupd.toml, for its offd settings (segment size, queue bound, expiry) and "
                   "the shard counts of a destination that never started")
def move(map_path, shards, dest, dirs, print_map, finish, config_path):
    """Give cluster shards to another node, all nodes stopped: copy, verify, swap the map."""
    cfg = load_config(config_path, {})
    options = (cfg.offd.segment_bytes, cfg.offd.max_queue, cfg.offd.expiry_days)
    fresh = {"offd": cfg.offd.shards or moving.FRESH["offd"], "accounts": cfg.accounts.shards or moving.FRESH["accounts"]}
    try:
        if finish:
            if not moving.finish(map_path, dirs, say=click.echo):
                click.echo("no unfinished move in those data dirs")
            return
        if not shards or not dest:
            raise click.UsageError("give --shards and --to (or --finish)")
        progress = Progress()
        try:
            moving.move(map_path, shards, dest, dirs, options, write_map=not print_map, say=click.echo,
                        progress=progress.step, fresh=fresh)
        finally:
            progress.close()
    except REFUSED as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
