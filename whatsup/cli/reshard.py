"""``whatsup-reshard``: move a stopped node's offd spools and accounts from M to N shards.

    whatsup-reshard --data-dir /srv/whatsup --offd-shards 8 --accounts-shards 8

Counts not given come from ``--config``. The data dir records the counts it was
written with, and whatsupd reads them from there unless its config names others,
so a node that needed no config file before a reshard needs none after it. The
tool refuses to run while a whatsupd holds the data dir, verifies every moved
item and account before swapping, and can be run again after an interruption
(it rolls the half-done swap back first). See whatsup/store/reshard.py for the plan.
"""
import os

import click

from ..store.datadir import DataDirBusy
from ..store.reshard import ReshardError, reshard
from . import load_config, setting_option, version_option
from .progress import Progress


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="the node's TOML configuration (data dir and, if set there, the wanted shard counts)")
@setting_option("--data-dir", "server.data_dir")
@click.option("--offd-shards", type=click.IntRange(1), help="new offd shard count (default: the config's)")
@click.option("--accounts-shards", type=click.IntRange(1),
              help="new account shard count (default: the config's)")
@version_option("whatsup-reshard")
def main(config_path, data_dir, offd_shards, accounts_shards):
    """Move offd and account data to new shard counts, with the server stopped."""
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
    except (DataDirBusy, ReshardError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.close()
    done = " and ".join(f"{store}.shards = {n}" for store, n in wanted.items() if n)
    click.echo(f"done: {directory} now has {done}; whatsupd reads the counts from the data dir")


if __name__ == "__main__":
    main()
