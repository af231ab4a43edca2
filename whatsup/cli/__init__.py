"""Command lines (click): ``whatsupd``, ``whatsup``; ops/ tools reuse the helpers here."""
import os

import click

from .. import __version__, config


def load_config(path, overrides, sets=()):
    """``config.load`` for a command line, with the environment's ``WHATSUP_SECTION__KEY``
    variables and ``sets`` (``--set``): a bad config is a one-line error, not a traceback."""
    try:
        return config.load(path, overrides, os.environ, sets)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def version_option(prog):
    """``--version`` for every command, printing ``prog`` and whatsup's version."""
    return click.version_option(__version__, "--version", prog_name=prog, message="%(prog)s %(version)s")


def setting_option(flag, name, **kw):
    """A command-line option overriding setting ``name``: its help, choices and shown default come
    from the settings table, and it is None when not given (so the config file's value stands)."""
    setting = config.BY_NAME[name]
    if setting.choices:
        kw.setdefault("type", click.Choice(setting.choices))
    shown = f"  [default: {setting.default}]" if setting.default != "" else ""
    return click.option(flag, help=setting.doc + shown, **kw)


def set_option():
    """``--set section.key=value``, repeatable: any setting of the table from the command line."""
    return click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="set any setting of etc/whatsupd.toml (repeatable); the environment's "
                             "WHATSUP_SECTION__KEY=VALUE variables do the same, under the command line")
