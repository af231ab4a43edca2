#!/usr/bin/env python3
"""Reshard a stopped node's data dir: offd spools and accounts from M to N shards.

    python3 ops/reshard.py --config etc/whatsupd.toml --offd-shards 8 --accounts-shards 8

Counts not given are taken from the config, which should already say the new
counts (the node refuses to start while they disagree with the data). The tool
refuses to run while a whatsupd holds the data dir, verifies every moved item
and account before swapping, and can be run again after an interruption (it
rolls the half-done swap back first). See whatsup/reshard.py for the plan.
"""
import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from whatsup import config  # noqa: E402  (the repo root must be on the path first)
from whatsup.cli import load_config  # noqa: E402
from whatsup.datadir import DataDirBusy  # noqa: E402
from whatsup.reshard import ReshardError, reshard  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="the node's TOML configuration (data dir and the wanted shard counts)")
@click.option("--data-dir", help=config.BY_NAME["server.data_dir"].doc)
@click.option("--offd-shards", type=click.IntRange(1), help="new offd shard count (default: the config's)")
@click.option("--accounts-shards", type=click.IntRange(1),
              help="new account shard count (default: the config's)")
def main(config_path, data_dir, offd_shards, accounts_shards):
    """Move offd and account data to new shard counts, with the server stopped."""
    cfg = load_config(config_path, {"server.data_dir": data_dir, "offd.shards": offd_shards,
                                    "accounts.shards": accounts_shards})
    directory = os.path.abspath(cfg.data_dir)
    if not os.path.isdir(directory):
        raise click.ClickException(f"no data dir at {directory}")
    options = (cfg["offd.segment_bytes"], cfg["offd.max_queue"], cfg["offd.expiry_days"])
    try:
        reshard(directory, cfg["offd.shards"], cfg["accounts.shards"], options, say=click.echo)
    except (DataDirBusy, ReshardError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"done: {directory} now has offd.shards = {cfg['offd.shards']} and "
               f"accounts.shards = {cfg['accounts.shards']}; start whatsupd with that config")


if __name__ == "__main__":
    main()
