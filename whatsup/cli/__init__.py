"""Command lines (click): ``whatsupd``, ``whatsup``; ops/ tools reuse the helpers here."""
import click

from .. import config


def load_config(path, overrides):
    """``config.load`` for a command line: a bad config is a one-line error, not a traceback."""
    try:
        return config.load(path, overrides)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
