"""``whatsup-shell``: attach to a running node's operator shell (see README "Operator shell").

Finds the shell the way the node does (``shell.listen`` of ``--config``, under
``--data-dir``), or takes ``--socket PATH``. Interactive by default, with line
editing and history when the terminal allows; ``-c EXPR`` prints one result
for scripts and ``--reload MODULE`` hot-loads modules, each exiting non-zero
when the node raised. Exits 1 with a one-line message when no node listens.
"""
import atexit
import os
import sys

import click

from . import load_config, setting_option, version_option
from ..shell import parse_listen
from ..shell.client import NotListening, ShellClient


def _history():
    """Line editing and a persistent history, when stdin is a terminal with readline."""
    if not sys.stdin.isatty():
        return
    try:
        import readline
    except ImportError:
        return
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    path = os.path.join(base, "whatsup", "shell_history")
    try:
        readline.read_history_file(path)
    except OSError:
        pass

    def save():
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            readline.set_history_length(1000)
            readline.write_history_file(path)
        except OSError:
            pass
    atexit.register(save)


def _address(socket_path, data_dir, config_path):
    if socket_path:
        return "unix", socket_path
    cfg = load_config(config_path, {"server.data_dir": data_dir})
    try:
        kind, address = parse_listen(cfg.shell.listen, cfg.data_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if kind == "off":
        raise click.ClickException("the operator shell is off in this configuration (shell.listen = \"off\")")
    return kind, address


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
              help="the node's shell socket (default: from --config / --data-dir)")
@setting_option("--data-dir", "server.data_dir")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="the node's TOML configuration, to find its shell.listen")
@click.option("-c", "command", metavar="EXPR", help="evaluate EXPR in the node, print the result, exit")
@click.option("--reload", "modules", multiple=True, metavar="MODULE",
              help="hot-load MODULE (e.g. whatsup.c2s.session) into the node; repeatable, stops at a failure")
@click.option("--all-nodes", is_flag=True,
              help="with --reload: roll each module through every node of the cluster, one after the other, "
                   "stopping at the first that fails (reload(MODULE, nodes='all'))")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for the node's answer with -c / --reload")
@version_option("whatsup-shell")
def main(socket_path, data_dir, config_path, command, modules, all_nodes, timeout):
    """Attach to a running whatsup node's operator shell (arbitrary code execution in the node)."""
    kind, address = _address(socket_path, data_dir, config_path)
    scripted = command is not None or modules
    try:
        client = ShellClient(kind, address, timeout if scripted else None)
    except NotListening as exc:
        raise click.ClickException(str(exc)) from None
    with client:
        if not scripted:
            _history()
            client.interact(input, _write)
            return
        rolling = ", nodes='all'" if all_nodes else ""
        sources = [f"reload({m!r}{rolling})" for m in modules] + ([command] if command is not None else [])
        for source in sources:
            try:
                out, ok = client.run(source)
            except TimeoutError:
                raise click.ClickException(f"no answer from the node within {timeout}s "
                                           f"(it may still be running {source!r})") from None
            _write(out)
            if client.prompt is None:
                raise click.ClickException("the node closed the shell connection")
            if not ok:
                sys.exit(1)


def _write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
