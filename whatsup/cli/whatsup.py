"""``whatsup``: the command-line client (register, send, inbox, chat)."""
import datetime
import functools
import json
import sys
import threading
import time

import click

from . import version_option
from ..client import DEFAULT_SERVER, PUSHED, Client, ClientState, Closed, ServerError

TICKS = {"sent": "✓", "delivered": "✓✓", "read": "✓✓ read"}


def _password_option(confirm=False):
    return click.option("--password", envvar="WHATSUP_PASSWORD", prompt=True, hide_input=True,
                        confirmation_prompt=confirm, help="or $WHATSUP_PASSWORD; prompted when absent")


def _as_option(f):
    return click.option("--as", "user", required=True, metavar="USER", help="who you are")(f)


def _connect(ctx, user=None, password=None):
    server = ctx.obj["server"]
    try:
        client = Client(server, tls=ctx.obj["tls"], cafile=ctx.obj["cafile"])
        if user is not None:
            state = ClientState(client.hello["node_id"], user)
            state.load(client)
            client.state = state
            client.login(user, password)
        return client
    except ServerError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach whatsupd at {server}: {exc}") from None


def _stamp(ms):
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def _line(frame):
    kind = frame["type"]
    where = f" in {frame['group']}" if "group" in frame else ""
    if kind == "msg":
        return f"[{_stamp(frame['ts'])}] {frame['from']}{where}: {frame['body']}  (id {frame['id']})"
    if kind == "receipt":
        return f"[{_stamp(frame['ts'])}] {TICKS[frame['status']]} {frame['status']} by {frame['from']}{where}: " + \
            ", ".join(frame["ids"])
    if kind == "group_event":
        detail = {k: v for k, v in frame.items() if k not in ("type", "group", "event", "by", "seq", "ts")}
        return f"[{_stamp(frame['ts'])}] group {frame['group']}: {frame['event']} by {frame['by']} " + \
            " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in detail.items())
    if kind == "presence":
        if frame["online"]:
            return f"{frame['user']} is online"
        if "last_seen" in frame:
            return f"{frame['user']} was last seen at {_stamp(frame['last_seen'])}"
        return f"{frame['user']} is offline"
    if kind == "typing":
        return f"{frame['from']}{where} is {frame['state']}" + ("..." if frame["state"] != "paused" else "")
    return json.dumps(frame)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="WHATSUP_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="whatsupd address host:port (or $WHATSUP_SERVER)")
@click.option("--tls", is_flag=True, envvar="WHATSUP_TLS",
              help="connect with TLS (to the server's tls.listen address) and verify its certificate")
@click.option("--cafile", envvar="WHATSUP_CAFILE", type=click.Path(exists=True, dir_okay=False),
              help="PEM file of the CA (or self-signed certificate) to trust with --tls; "
                   "the system's CAs without it")
@version_option("whatsup")
@click.pass_context
def main(ctx, server, tls, cafile):
    """Talk to a whatsup server."""
    ctx.obj = {"server": server, "tls": tls or bool(cafile), "cafile": cafile}


@main.command()
@click.argument("user")
@_password_option(confirm=True)
@click.pass_context
def register(ctx, user, password):
    """Create the account USER."""
    with _connect(ctx) as client:
        _call(client.register, user, password)
    click.echo(f"registered {user}")


def _call(fn, *args, **kw):
    """Run a client request; a server error becomes the CLI's one-line error."""
    try:
        return fn(*args, **kw)
    except ServerError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


def _target(peer, group):
    if (peer is None) == (group is None):
        raise click.UsageError("give PEER or --group GROUP (one of them)")


@main.command()
@_as_option
@_password_option()
@click.option("--group", metavar="GROUP", help="send to this group instead of PEER")
@click.argument("words", nargs=-1, required=True, metavar="[PEER] TEXT")
@click.pass_context
def send(ctx, user, password, group, words):
    """Send TEXT to PEER (or to --group); returns after ✓ and prints the message id."""
    if len(words) > 2:
        raise click.UsageError("too many arguments: quote TEXT")
    peer, text = (words[0] if len(words) == 2 else None), words[-1]
    _target(peer, group)
    with _connect(ctx, user, password) as client:
        answer = _call(client.send, peer, text, group=group)
    click.echo(answer["id"])


@main.command()
@_as_option
@_password_option()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--wait", default=0.5, show_default=True, help="seconds to wait for stragglers")
@click.pass_context
def inbox(ctx, user, password, as_json, wait):
    """Print every pending message and receipt, ack them, exit."""
    with _connect(ctx, user, password) as client:
        pending = client.last_login.get("queued", 0)
        seen = 0
        while True:
            frame = client.recv(wait if seen >= pending else client.timeout)
            if frame is None:
                break
            if frame["type"] not in PUSHED:
                continue
            seen += 1
            click.echo(json.dumps(frame, ensure_ascii=False) if as_json else _line(frame))
        client.flush_acks()
        client.ping()  # the acks are in once the pong is back
        client.state.save(client)


@main.command()
@_as_option
@_password_option()
@click.option("--group", metavar="GROUP", help="chat in this group instead of with PEER")
@click.argument("peer", required=False)
@click.pass_context
def chat(ctx, user, password, group, peer):
    """Chat with PEER (or in --group): type a line to send it, Ctrl-D to quit.

    Ticks: ✓ sent, ✓✓ delivered, read (per member in a group). PEER's presence
    and typing, and the group's events, are shown as they happen.
    """
    _target(peer, group)
    _Chat(_connect(ctx, user, password), peer, group).run(user)


class _Chat:
    """One ``whatsup chat``: stdin sends, a thread shows what arrives, another pings.

    The client is not thread-safe: every use of it holds ``lock``.
    """

    def __init__(self, client, peer, group):
        self.client, self.peer, self.group = client, peer, group
        self.lock = threading.Lock()
        self.mine = {}  # message id -> text
        # (message id, member or None) -> the highest tick shown (✓ can arrive after ✓✓: it
        # waits for the fsync; in a group, for the fsync of every member's copy)
        self.shown = {}

    def run(self, user):
        client, peer, group = self.client, self.peer, self.group
        if peer is not None:
            try:
                click.echo(_line(client.subscribe(peer)))
            except ServerError as exc:
                click.echo(f"! presence of {peer}: {exc.code}")
        threading.Thread(target=self.receive, daemon=True).start()
        threading.Thread(target=self.keepalive, daemon=True).start()
        click.echo(f"chatting {'in ' + group if group else 'with ' + peer} as {user}; Ctrl-D to quit")
        for text in sys.stdin:
            text = text.rstrip("\n")
            if not text:
                continue
            with self.lock:
                frame = client.send_nowait(peer, text, group=group)
            self.mine[frame["id"]] = text
        with self.lock:
            client.close()

    def show(self, text):
        with self.lock:
            click.echo(text)
            sys.stdout.flush()  # a pipe is block-buffered; a chat line must show now

    def tick(self, mid, status, member=None):
        rank = list(TICKS).index(status)
        if rank > self.shown.get((mid, member), -1):
            self.shown[(mid, member)] = rank
            if member is not None:  # a member's ✓✓ implies the message's ✓
                self.shown.setdefault((mid, None), 0)
            self.show(f"  {TICKS[status]} {member + ': ' if member else ''}{self.mine.get(mid, mid)}")

    def ours(self, frame):
        return frame.get("group") == self.group and (self.group is not None or frame["from"] == self.peer)

    def receive(self):
        client = self.client
        try:
            while True:
                with self.lock:
                    frame = client.recv(0.2)
                if frame is not None:
                    self.handle(frame)
                    client.state.save(client)
        except (Closed, OSError) as exc:
            self.show(f"! disconnected: {exc}")

    def handle(self, frame):
        kind = frame["type"]
        if kind == "msg" and self.ours(frame):
            read = {"type": "read", "ref": 0, "to": frame["from"], "ids": [frame["id"]]}
            with self.lock:
                self.client.send_frame({**read, "group": self.group} if self.group else read)
        if kind == "sent":
            self.tick(frame["id"], "sent")
        elif kind == "receipt":
            for mid in frame["ids"]:
                self.tick(mid, frame["status"], frame.get("group") and frame["from"])
        elif kind == "error" and frame.get("ref") != 0:  # ref 0: our own read receipts
            self.show(f"! {frame['code']}: {frame['message']}")
        elif kind != "error":
            self.show(_line(frame))

    def keepalive(self):
        interval = float(self.client.hello.get("idle_timeout", 90)) / 3
        while True:
            time.sleep(interval)
            with self.lock:
                self.client.send_frame({"type": "ping"})


@main.command()
@_as_option
@_password_option()
@click.argument("target")
@click.option("--watch", default=0.0, show_default=True, metavar="SECONDS",
              help="keep printing changes for this long")
@click.pass_context
def presence(ctx, user, password, target, watch):
    """Show whether TARGET is online, or when they were last seen."""
    with _connect(ctx, user, password) as client:
        click.echo(_line(_call(client.subscribe, target)))
        deadline = time.monotonic() + watch
        while time.monotonic() < deadline:
            frame = client.recv(deadline - time.monotonic())
            if frame is not None and frame["type"] == "presence":
                click.echo(_line(frame))


@main.command()
@_as_option
@_password_option()
@click.argument("setting", type=click.Choice(["everyone", "nobody"]))
@click.pass_context
def privacy(ctx, user, password, setting):
    """Who may see your last seen time."""
    with _connect(ctx, user, password) as client:
        _call(client.privacy, setting)
    click.echo(f"last seen visible to {setting}")


@main.command()
@_as_option
@_password_option()
@click.argument("other")
@click.option("--undo", is_flag=True, help="unblock instead")
@click.pass_context
def block(ctx, user, password, other, undo):
    """Block OTHER (their messages, presence requests and typing no longer reach you)."""
    with _connect(ctx, user, password) as client:
        _call(client.unblock if undo else client.block, other)
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


@_group_command
@click.argument("group_id", metavar="GROUP")
@click.argument("members", nargs=-1, required=True)
def group_add(client, group_id, members):
    """Add MEMBERS to GROUP (admins only)."""
    _call(client.group_add, group_id, members)


@_group_command
@click.argument("group_id", metavar="GROUP")
@click.argument("members", nargs=-1, required=True)
def group_remove(client, group_id, members):
    """Remove MEMBERS from GROUP (admins only)."""
    _call(client.group_remove, group_id, members)


@_group_command
@click.argument("group_id", metavar="GROUP")
def group_leave(client, group_id):
    """Leave GROUP."""
    _call(client.group_leave, group_id)


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
    for g in _call(client.group_list):
        click.echo(f"{g['group']} {g['size']} {g['name']}")


if __name__ == "__main__":
    main()
