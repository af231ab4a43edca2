"""``whatsupd``: start a node. Options override etc/whatsupd.toml, which overrides the defaults."""
import logging
import sys

import click

from .. import config
from ..node import Node, StartError
from . import load_config


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration (see etc/whatsupd.toml); embedded defaults without it")
@click.option("--listen", help=config.BY_NAME["server.listen"].doc)
@click.option("--data-dir", help=config.BY_NAME["server.data_dir"].doc)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help=config.BY_NAME["server.log_level"].doc)
@click.version_option(package_name="whatsup", message="whatsupd %(version)s")
def main(config_path, listen, data_dir, log_level):
    """Run a whatsup node until SIGTERM or SIGINT (exit status 1 if its supervision tree gave up)."""
    cfg = load_config(config_path, {"server.listen": listen, "server.data_dir": data_dir,
                                    "server.log_level": log_level})
    logging.basicConfig(level=cfg["server.log_level"].upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = Node(cfg)
    try:
        node.start()
    except (StartError, config.ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(node.serve_forever())


if __name__ == "__main__":
    main()
