"""``whatsupd``: start a node. Options override etc/whatsupd.toml, which overrides the defaults."""
import faulthandler
import gc
import logging
import resource
import sys

import click

from .. import config
from ..observe import logs
from ..address import is_loopback, split
from ..node import Node, StartError
from . import load_config, set_option, setting_option, version_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration (see etc/whatsupd.toml); embedded defaults without it")
@setting_option("--listen", "server.listen")
@setting_option("--data-dir", "server.data_dir")
@setting_option("--log-level", "server.log_level")
@set_option()
@version_option("whatsupd")
def main(config_path, listen, data_dir, log_level, sets):
    """Run a whatsup node until SIGTERM or SIGINT (exit status 1 if its supervision tree gave up).

    Settings come from the defaults, then --config, then WHATSUP_SECTION__KEY variables, then
    --set, then the options below; a misspelt setting name stops it with the nearest name."""
    cfg = load_config(config_path, {"server.listen": listen, "server.data_dir": data_dir,
                                    "server.log_level": log_level}, sets)
    logs.setup(cfg.server.log_level.upper(), fmt=cfg.server.log_format, node=cfg.server.node)
    faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) leaves every thread's Python stack on stderr
    warn_plaintext(cfg)
    raise_nofile()
    try:
        node = Node(cfg)
        node.start()
    except (StartError, config.ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    tune_gc()
    sys.exit(node.serve_forever())


def raise_nofile():
    """Raise the soft limit of open files to the hard one: every connection is a descriptor,
    and a shell's usual 1,024 locked new users out at ~1,000 idle connections (issue 11)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("whatsup").warning("cannot raise the open files limit from %d to %d: %s",
                                                 soft, hard, exc)
    logging.getLogger("whatsup").info("open files: at most %d (soft limit %d before, hard limit %d)",
                                      resource.getrlimit(resource.RLIMIT_NOFILE)[0], soft, hard)


def warn_plaintext(cfg):
    """One line when clients would send passwords and messages in clear over a network."""
    host = split(cfg.server.listen, default_host="")[0]
    if not is_loopback(host):
        logging.getLogger("whatsup").warning(
            "clients on %s talk plain TCP, unencrypted (passwords too): keep server.listen on loopback "
            "and give other hosts tls.listen", cfg.server.listen)


def tune_gc():
    """Fewer, cheaper cyclic collections for a server whose heap is mostly long-lived.

    Under ops/bench's ``direct`` load the default thresholds (700, 10, 10) spent
    ~20% of the node's time in the collector, mostly in full collections of
    ~80 ms that rescan the dedup windows and queued items each time a quarter of
    them turned over; (10000, 20, 20) cut that to ~7% with no full collection in
    a 6-second run. Objects made at start-up (recovered queues) are frozen out of
    the scans altogether.
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


if __name__ == "__main__":
    main()
