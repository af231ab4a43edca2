"""``whatsupctl``: the admin command line, over the node's control socket (docs/ADMIN.md).

Safe to script: it runs named commands with checked arguments, never Python.
Every command takes ``--json`` (one JSON document on stdout) and prints an
aligned table otherwise. Exit status 0 on success, 1 when the node refused
(``whatsupctl: CODE: message`` on stderr) or cannot be reached; ``status``
exits 1 when the node is not healthy.
"""
import datetime
import json
import sys

import click

from .. import config
from ..ctl import Refused
from ..ctl.client import ControlClient, NotListening
from ..ctl.server import socket_path
from ..shell import Table
from . import load_config

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Ctl:
    """The connection a command line makes, opened on first use."""

    def __init__(self, path, timeout, as_json):
        self.path, self.timeout, self.json = path, timeout, as_json

    def call(self, cmd, **args):
        try:
            with ControlClient(self.path, self.timeout) as client:
                return client.call(cmd, **args)
        except NotListening as exc:
            raise click.ClickException(str(exc)) from None
        except TimeoutError:
            raise click.ClickException(f"no answer from the node within {self.timeout}s") from None
        except Refused as exc:
            click.echo(f"whatsupctl: {exc.code}: {exc.message}", err=True)
            sys.exit(1)

    def show(self, result, columns=None):
        """``result`` as JSON with --json; else rows as a table (``columns``) or a dict as key: value."""
        if self.json:
            click.echo(json.dumps(result, sort_keys=True))
        elif columns is not None:
            click.echo(repr(Table([{c: _human(c, r.get(c)) for c in columns} for r in result], columns)))
        else:
            width = max((len(k) for k in result), default=0)
            for key, value in result.items():
                value = json.dumps(value) if isinstance(value, (dict, list)) else _human(key, value)
                click.echo(f"{key + ':':<{width + 1}} {value}")


TIMES = ("since", "at", "expires", "created", "last_seen", "name_reusable_at")  # seconds since the epoch


def _human(key, value):
    """Times as local dates in tables (``ts`` is in ms); None as "-"; the rest as it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in TIMES + ("ts",):
        seconds = value / 1000 if key == "ts" else value
        return datetime.datetime.fromtimestamp(seconds).isoformat(" ", "seconds")
    return "-" if value is None else value


def _password(prompt):
    return click.option("--password", prompt=prompt, hide_input=True, confirmation_prompt=True,
                        help="the password (prompted for, hidden, when not given)")


@click.group(context_settings=CONTEXT)
@click.option("--socket", "socket", type=click.Path(dir_okay=False),
              help="the node's control socket (default: from --config / --data-dir)")
@click.option("--data-dir", help=config.BY_NAME["server.data_dir"].doc)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="the node's TOML configuration, to find its control.socket")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document instead of a table")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds to wait for the node")
@click.version_option(package_name="whatsup", message="whatsupctl %(version)s")
@click.pass_context
def main(ctx, socket, data_dir, config_path, as_json, timeout):
    """Administer a running whatsup node: users, sessions, queues, groups, invites, stats."""
    if socket is None:
        cfg = load_config(config_path, {"server.data_dir": data_dir})
        socket = socket_path(cfg.control.socket, cfg.data_dir)
        if socket is None:
            raise click.ClickException('the control socket is off in this configuration (control.socket = "off")')
    ctx.obj = Ctl(socket, timeout, as_json)


def json_option(fn):
    """``--json`` after the subcommand too (``whatsupctl users list --json``)."""
    def set_json(ctx, param, value):
        if value:
            ctx.find_object(Ctl).json = True
    return click.option("--json", is_flag=True, expose_value=False, callback=set_json,
                        help="print one JSON document instead of a table")(fn)


def leaf(group, name, **kw):
    """A subcommand of ``group`` with ``--json`` and the Ctl passed first."""
    def wrap(fn):
        return group.command(name, **kw)(json_option(click.pass_obj(fn)))
    return wrap


def relay(group, name, doc, *params, columns=None, confirm=None):
    """``whatsupctl GROUP NAME ...``: send the arguments to the node's command of that name and
    show its answer (a table of ``columns`` for rows); most commands are no more than that.
    With ``confirm`` (a question, formatted with the arguments) it asks first unless --yes."""
    cmd = name if group is main else f"{group.name}.{name}"

    def run(ctl, yes=False, **args):
        if confirm and not yes:
            click.confirm(confirm.format(**args), abort=True)
        ctl.show(ctl.call(cmd, **args), columns)
    run.__doc__ = doc
    if confirm:
        params += (YES,)
    for param in reversed(params):
        run = param(run)
    leaf(group, name)(run)


USER = click.argument("user")
YES = click.option("--yes", is_flag=True, help="do not ask for confirmation")
USER_COLUMNS = ("user", "online", "banned")
SESSION_COLUMNS = ("user", "device", "addr", "since", "node", "pid")
DEVICE_COLUMNS = ("device", "name", "online", "created", "last_seen")


@main.group()
def users():
    """Accounts: list, show, register, unregister, ban, unban, set-password, kick."""


relay(users, "list", "Every account, with online and banned flags.",
      click.option("--online", is_flag=True, help="only users with a session now"), columns=USER_COLUMNS)
relay(users, "show", "One account: session, queue, groups, blocks, ban, hash cost.", USER)
relay(users, "register", "Register USER (whatever accounts.registration says).",
      USER, _password("Password for the new user"))


relay(users, "unregister", "Delete USER everywhere: sessions, queue, groups, blocks (the name is retired).",
      USER, confirm="Delete the account {user!r} and everything queued for it?")
relay(users, "ban", "Refuse USER's logins and close their session.",
      USER, click.option("--reason", default="banned by the operator", show_default=True))
relay(users, "unban", "Let USER log in again.", USER)
relay(users, "set-password", "Set USER's password; their session is closed with password_changed.",
      USER, _password("New password"))
relay(users, "kick", "Close USER's session (they may log in again).",
      USER, click.option("--reason", default="disconnected by the operator", show_default=True))


@main.group()
def sessions():
    """Who is connected."""


relay(sessions, "list", "Who is connected, from where, since when, on which node.", columns=SESSION_COLUMNS)


@main.group()
def devices():
    """A user's devices (docs/PROTOCOL.md, "Devices")."""


@leaf(devices, "list")
@click.argument("user")
def devices_list(ctl, user):
    """USER's devices: the primary (0) and the linked companions."""
    ctl.show(ctl.call("devices.list", user=user), DEVICE_COLUMNS)


@leaf(devices, "unlink")
@click.argument("user")
@click.argument("device", type=int)
def devices_unlink(ctl, user, device):
    """Unlink companion DEVICE of USER: its token is revoked, its session closed, its items released."""
    ctl.show(ctl.call("devices.unlink", user=user, device=device))


@main.group()
def queue():
    """What offd holds for a user."""


@leaf(queue, "show")
@click.argument("user")
@click.option("--limit", type=int, default=100, show_default=True, help="items listed at most")
def queue_show(ctl, user, limit):
    """USER's queued items (seq, time, kind, sender, id, size)."""
    result = ctl.call("queue.show", user=user, limit=limit)
    if ctl.json:
        return ctl.show(result)
    click.echo(f"{result['count']} items, {result['bytes']} bytes queued for {user}")
    if result["items"]:
        ctl.show(result["items"], ("seq", "ts", "kind", "from", "id", "bytes"))


@leaf(queue, "purge")
@click.argument("user")
@YES
def queue_purge(ctl, user, yes):
    """Drop everything queued for USER (asks first unless --yes)."""
    if not yes:
        held = ctl.call("queue.show", user=user, limit=0)
        click.confirm(f"Drop {held['count']} items ({held['bytes']} bytes) queued for {user!r}?", abort=True)
    ctl.show(ctl.call("queue.purge", user=user))


@main.group()
def groups():
    """Groups: list, show, delete."""


relay(groups, "list", "Every group with its name and size.", columns=("group", "name", "members", "admins"))


@leaf(groups, "show")
@click.argument("group")
def groups_show(ctl, group):
    """GROUP's name, members and admins."""
    result = ctl.call("groups.show", group=group)
    if ctl.json:
        return ctl.show(result)
    click.echo(f"{result['group']} {result['name']!r}, {len(result['members'])} members")
    ctl.show(result["members"], ("user", "admin"))


relay(groups, "delete", "Dissolve GROUP; its members get a dissolved group event.",
      click.argument("group"), confirm="Dissolve group {group!r}?")


@main.group()
def invites():
    """Invite tokens for accounts.registration = "invite"."""


INVITE_COLUMNS = ("token", "uses", "used", "expires", "valid", "by")


@leaf(invites, "create")
@click.option("--uses", type=int, default=1, show_default=True, help="registrations it is good for")
@click.option("--days", type=float, help="days it stays valid (default accounts.invite_days)")
def invites_create(ctl, uses, days):
    """Make an invite token."""
    result = ctl.call("invites.create", uses=uses, days=days)
    if ctl.json:
        return ctl.show(result)
    click.echo(result["token"])
    if result["mode"] != "invite":
        click.echo(f"note: accounts.registration is {result['mode']!r}, not 'invite'", err=True)


relay(invites, "list", "Every invite, with its uses and expiry.", columns=INVITE_COLUMNS)
relay(invites, "revoke", "Forget TOKEN.", click.argument("token"))
ALL_NODES = click.option("--all-nodes", is_flag=True, help="every node of the cluster (cluster.map)")
relay(main, "stats", "Connections, message rates, queues, mailboxes, memory and every metric.",
      click.option("--interval", type=float, default=1.0, show_default=True,
                   help="seconds the rates are measured over"), ALL_NODES)
relay(main, "reload", "Hot-load MODULE's new code into the node (e.g. whatsup.c2s.session); with "
      "--all-nodes into every node, one after the other, stopping at the first that fails.",
      click.argument("module"), ALL_NODES)


@leaf(main, "status")
def status(ctl):
    """Is the node healthy? Exit status 0 if so, 1 if not."""
    result = ctl.call("status")
    ctl.show(result)
    sys.exit(0 if result["healthy"] else 1)


if __name__ == "__main__":
    main()
