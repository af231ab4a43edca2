"""``whatsup``: the command-line client (register, send, inbox, chat, groups, presence)."""
import functools
import json
import socket
import time

import click

from . import chat as chat_ui, version_option
from ..client import DEFAULT_SERVER, PUSHED, BodyTooLarge, Client, ClientState, Connection, ServerError
from ..protocol import ProtocolError
from .render import describe


def _password_option(confirm=False):
    """--password; prompted when absent, on a command that acts as a device only when that
    device is the primary (a companion linked here logs in with its token)."""
    return click.option("--password", envvar="WHATSUP_PASSWORD", prompt=confirm, hide_input=True,
                        confirmation_prompt=confirm, help="or $WHATSUP_PASSWORD; prompted when needed")


def _as_option(f):
    return click.option("--as", "user", required=True, metavar="USER", help="who you are")(f)


def _connect(ctx, user=None, password=None):
    """A client, logged in as ``user``'s device (``--device``; by default the companion linked
    here, else the primary) when ``user`` is given."""
    server = ctx.obj["server"]
    try:
        client = Client(server, tls=ctx.obj["tls"], cafile=ctx.obj["cafile"])
        if user is not None:
            node_id = client.hello["node_id"]
            credential = ClientState(node_id, user).credential()
            device = ctx.obj["device"] if ctx.obj["device"] is not None else credential[0] if credential else 0
            state = ClientState(node_id, user, device=device)
            state.load(client)
            client.state = state
            if device == 0:
                client.login(user, password if password is not None else
                             click.prompt("Password", hide_input=True, err=True))
            elif credential is None or credential[0] != device:
                raise click.ClickException(f"device {device} of {user} is not linked here "
                                           f"(whatsup link --code CODE {user})")
            else:
                _login_linked(client, ClientState(node_id, user), user, device, credential[1])
        return client
    except ServerError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach whatsupd at {server}: {exc}") from None


def _login_linked(client, linked, user, device, token):
    """Log in as the companion linked here; a refused token means it was unlinked (by a device of
    the user, the operator, or after devices.inactive_after): say so and forget the token."""
    try:
        client.login(user, device=device, token=token)
    except ServerError as exc:
        if exc.code != "auth_failed":
            raise
        linked.forget_credential()
        raise click.ClickException(f"device {device} of {user} is no longer linked (its token was refused and is "
                                   f"forgotten here); link this machine again: whatsup link --code CODE {user}") from None


def _linked_here(ctx, user):
    """Whether a companion of ``user`` is linked in this state dir for this server (then its token,
    not the password, logs in: a linked laptop never knows the password)."""
    with _connect(ctx) as client:
        return ClientState(client.hello["node_id"], user).credential() is not None


class _Commands(click.Group):
    """``whatsup``'s commands: a connection lost in the middle of one is a line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ConnectionError, TimeoutError, ProtocolError) as exc:  # Closed is a ConnectionError
            raise click.ClickException(f"lost the connection to whatsupd at {ctx.obj['server']}: {exc}") from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="WHATSUP_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="whatsupd address host:port (or $WHATSUP_SERVER)")
@click.option("--tls", is_flag=True, envvar="WHATSUP_TLS",
              help="connect with TLS (to the server's tls.listen address) and verify its certificate")
@click.option("--cafile", envvar="WHATSUP_CAFILE", type=click.Path(exists=True, dir_okay=False),
              help="PEM file of the CA (or self-signed certificate) to trust with --tls; "
                   "the system's CAs without it")
@click.option("--device", type=int, envvar="WHATSUP_DEVICE", default=None,
              help="act as this device of the user: 0 the primary (password), N a companion linked here "
                   "(its token); default: the companion linked here, else the primary")
@version_option("whatsup")
@click.pass_context
def main(ctx, server, tls, cafile, device):
    """Talk to a whatsup server."""
    ctx.obj = {"server": server, "tls": tls or bool(cafile), "cafile": cafile, "device": device}


@main.command()
@click.argument("user")
@_password_option(confirm=True)
@click.pass_context
def register(ctx, user, password):
    """Create the account USER."""
    with _connect(ctx) as client:
        _call(client.register, user, password)
    click.echo(f"registered {user}")


@main.command()
@click.option("--as", "as_user", metavar="USER", help="on a device of USER: print a code to link a new one")
@_password_option()
@click.option("--code", help="on the new device: the code another device of USER printed")
@click.option("--name", default=lambda: socket.gethostname()[:100] or "device", show_default="this host's name",
              help="the new device's name")
@click.argument("user", required=False)
@click.pass_context
def link(ctx, as_user, password, code, name, user):
    """Link a new device: ``--as USER`` prints a code, ``--code CODE USER`` links this machine."""
    if (as_user is None) == (code is None):
        raise click.UsageError("give --as USER (print a code) or --code CODE USER (link this machine)")
    if as_user is not None:
        with _connect(ctx, as_user, password) as client:
            answer = _call(client.request, {"type": "link_code"})
        code = answer["code"]
        click.echo(f"{code}  (valid for {answer['expires_in']:g} s, once: on the new device run "
                   f"whatsup link --code {code} {as_user})")
        return
    if user is None:
        raise click.UsageError("--code needs the USER to link to")
    with _connect(ctx) as client:
        device, token = _call(client.link, user, code, name)
        ClientState(client.hello["node_id"], user).save_credential(device, token)
    click.echo(f"linked this machine as device {device} ({name}) of {user}")


def _user_command(*params):
    """A command run as ``--as USER`` (with ``--password``), then ``params`` (click decorators, in
    the order they would be written), then the context: the stack every such command wore."""
    def make(f):
        f = click.pass_context(f)
        for param in reversed(params):
            f = param(f)
        return main.command()(_as_option(_password_option()(f)))
    return make


_about_a_device = _user_command(click.argument("device", type=int))  # history, unlink


@_user_command()
def devices(ctx, user, password):
    """List USER's devices: 0 the primary, then the linked companions."""
    with _connect(ctx, user, password) as client:
        for d in _call(client.devices):
            seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["last_seen"])) if "last_seen" in d else "-"
            here = "  (this one)" if d["device"] == client.device else ""
            click.echo(f"{d['device']:>3}  {d['name']:<20} {'online' if d['online'] else 'offline':<8} "
                       f"last seen {seen}{here}")


@_about_a_device
def history(ctx, user, password, device):
    """Send DEVICE of USER this device's message history (as WhatsApp gives a new device)."""
    with _connect(ctx, user, password) as client:
        bundles = client.state.bundles(client.hello["max_body"])
        for bundle in bundles:
            _call(client.send_history, device, bundle)
    click.echo(f"sent {sum(len(json.loads(b)) for b in bundles)} messages of history to device {device}")


@_about_a_device
def unlink(ctx, user, password, device):
    """Unlink DEVICE of USER: its token stops working and its queue is dropped."""
    _request(ctx, user, password, lambda client: client.unlink(device))
    click.echo(f"unlinked device {device} of {user}")


@_user_command(
    click.option("--json", "as_json", is_flag=True, help="the answer as one JSON object"),
    click.argument("peer"),
    click.argument("message_id", metavar="ID"))
def info(ctx, user, password, as_json, peer, message_id):
    """Message info: which of PEER's devices have USER's message ID (✓✓ is the first of them)."""
    devices = _request(ctx, user, password, lambda client: client.info(peer, message_id))
    if as_json:
        return click.echo(json.dumps({"to": peer, "id": message_id, "devices": devices}))
    for d in devices:
        click.echo(f"{peer} device {d['device']}{' (primary)' if d['device'] == 0 else ''}: "
                   f"{'delivered' if d['delivered'] else 'pending'}")


def _call(fn, *args, **kw):
    """Run a client request; a server error becomes the CLI's one-line error."""
    try:
        return fn(*args, **kw)
    except ServerError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


def _request(ctx, user, password, ask):
    """Log in, make the one request ``ask(client)``, log out; its answer."""
    with _connect(ctx, user, password) as client:
        return _call(ask, client)


def _target(peer, group):
    if (peer is None) == (group is None):
        raise click.UsageError("give PEER or --group GROUP (one of them)")


@_user_command(
    click.option("--group", metavar="GROUP", help="send to this group instead of PEER"),
    click.argument("words", nargs=-1, required=True, metavar="[PEER] TEXT"))
def send(ctx, user, password, group, words):
    """Send TEXT to PEER (or to --group); returns after ✓ and prints the message id."""
    if len(words) > 2:
        raise click.UsageError("too many arguments: quote TEXT")
    peer, text = (words[0] if len(words) == 2 else None), words[-1]
    _target(peer, group)
    with _connect(ctx, user, password) as client:
        try:
            answer = _call(client.send, peer, text, group=group)
        except BodyTooLarge as exc:
            raise click.ClickException(f"not sent: {exc}") from None
        client.state.remember({"ts": answer["ts"], "from": user, "to": peer, "group": group, "id": answer["id"],
                               "body": text})
        client.state.save(client)
    click.echo(answer["id"])


@_user_command(
    click.option("--json", "as_json", is_flag=True, help="one JSON object per line"),
    click.option("--wait", default=0.5, show_default=True, help="seconds to wait for stragglers"))
def inbox(ctx, user, password, as_json, wait):
    """Print every pending message and receipt, ack them, exit."""
    with _connect(ctx, user, password) as client:
        pending = client.last_login.get("queued", 0)
        seen, deadline = 0, time.monotonic() + client.timeout
        try:
            while True:  # until `wait` s pass with nothing new, once the `pending` items came (some,
                frame = client.recv(wait)  # already shown or this device's own, are not returned)
                if frame is None:
                    if client.items >= pending or time.monotonic() >= deadline:
                        break
                    continue
                if frame["type"] not in PUSHED:
                    continue
                seen += 1
                click.echo(_shown(client, frame, user, as_json))
            if not seen and not as_json:
                click.echo("no new messages")
            client.flush_acks()
            client.ping()  # the acks are in once the pong is back
        finally:  # also when the server died mid-inbox: what was shown was shown (its seq and id
            client.state.save(client)  # are kept), so the next run skips it when it comes again


def _shown(client, frame, user, as_json):
    """One pushed item as ``inbox`` prints it (a history bundle goes into this device's history)."""
    if frame["type"] == "history":
        frame = {"type": "history", "from": frame["from"], "device": frame["device"],
                 "messages": client.state.merge(frame["bundle"])}
        line = f"history from device {frame['device']}: {frame['messages']} messages"
    else:
        if frame["type"] == "msg":
            client.state.remember(frame)
        line = describe(frame, user)
    return json.dumps(frame, ensure_ascii=False) if as_json else line


@_user_command(
    click.option("--group", metavar="GROUP", help="chat in this group instead of with PEER"),
    click.argument("peer", required=False))
def chat(ctx, user, password, group, peer):
    """Chat with PEER (or in --group): type a line to send it, Ctrl-D to quit.

    Ticks: ✓ sent, ✓✓ delivered, read (per member in a group). PEER's presence
    and typing, and the group's events, are shown as they happen.
    """
    _target(peer, group)
    if password is None and not ctx.obj["device"] and not _linked_here(ctx, user):
        password = click.prompt("Password", hide_input=True, err=True)
    conn = Connection(ctx.obj["server"], user, password, tls=ctx.obj["tls"], cafile=ctx.obj["cafile"],
                      state_dir=ClientState.default_dir(), device=ctx.obj["device"])
    try:
        outcome = chat_ui.run(conn, user, peer, group)
    except ServerError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    if outcome == "refused":
        raise SystemExit(1)


@_user_command(
    click.argument("target"),
    click.option("--watch", default=0.0, show_default=True, metavar="SECONDS",
                 help="keep printing changes for this long"))
def presence(ctx, user, password, target, watch):
    """Show whether TARGET is online, or when they were last seen."""
    with _connect(ctx, user, password) as client:
        click.echo(describe(_call(client.subscribe, target)))
        deadline = time.monotonic() + watch
        while time.monotonic() < deadline:
            frame = client.notice(deadline - time.monotonic())
            if frame is not None and frame["type"] == "presence":
                click.echo(describe(frame))


@_user_command(
    click.argument("setting", type=click.Choice(["everyone", "nobody"])))
def privacy(ctx, user, password, setting):
    """Who may see your last seen time."""
    _request(ctx, user, password, lambda client: client.privacy(setting))
    click.echo(f"last seen visible to {setting}")


@_user_command(
    click.argument("other"),
    click.option("--undo", is_flag=True, help="unblock instead"))
def block(ctx, user, password, other, undo):
    """Block OTHER (their messages, presence requests and typing no longer reach you)."""
    _request(ctx, user, password, lambda client: (client.unblock if undo else client.block)(other))
    click.echo(f"{'unblocked' if undo else 'blocked'} {other}")


# --- groups ------------------------------------------------------------------------------

@main.group()
def group():
    """Create and manage groups (see docs/PROTOCOL.md, "Groups")."""


def _group_command(f):
    """A ``whatsup group`` sub-command: --as, --password, and a connected client for ``f``."""
    @group.command(name=f.__name__.replace("group_", ""), help=f.__doc__)
    @_as_option
    @_password_option()
    @click.pass_context
    @functools.wraps(f)
    def command(ctx, user, password, **args):
        with _connect(ctx, user, password) as client:
            f(client, **args)
    return command


@_group_command
@click.argument("name")
@click.argument("members", nargs=-1)
def group_create(client, name, members):
    """Create group NAME with MEMBERS (you are its admin); prints its id."""
    click.echo(_call(client.group_create, name, members))


def _membership(change, doc, said):
    """``group add`` and ``group remove``: MEMBERS into or out of GROUP, then ``said``."""
    def command(client, group_id, members):
        _call(getattr(client, f"group_{change}"), group_id, members)
        click.echo(said.format(members=", ".join(members), group=group_id))
    command.__name__, command.__doc__ = f"group_{change}", doc
    members = click.argument("members", nargs=-1, required=True)(command)
    return _group_command(click.argument("group_id", metavar="GROUP")(members))


group_add = _membership("add", "Add MEMBERS to GROUP (admins only).",
                        "added {members} to {group} (those already in it stay as they were)")
group_remove = _membership("remove", "Remove MEMBERS from GROUP (admins only).",
                           "removed {members} from {group} (if they were in it)")


@_group_command
@click.argument("group_id", metavar="GROUP")
def group_leave(client, group_id):
    """Leave GROUP."""
    _call(client.group_leave, group_id)
    click.echo(f"left {group_id}")


@_group_command
@click.argument("group_id", metavar="GROUP")
def group_info(client, group_id):
    """Show GROUP's name and members (admins marked *)."""
    info = _call(client.group_info, group_id)
    admins = set(info["admins"])
    click.echo(f"{info['group']} {info['name']}")
    for member in info["members"]:
        click.echo(f"  {member}{' *' if member in admins else ''}")


@_group_command
def group_list(client):
    """List your groups: id, member count, name."""
    groups = _call(client.group_list)
    for g in groups:
        click.echo(f"{g['group']} {g['size']} {g['name']}")
    if not groups:
        click.echo("no groups")


if __name__ == "__main__":
    main()
