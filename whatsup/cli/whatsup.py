"""``whatsup``: the command-line client (register, send, inbox, chat)."""
import datetime
import json
import sys
import threading
import time

import click

from ..client import DEFAULT_SERVER, Client, ClientState, Closed, ServerError

TICKS = {"sent": "✓", "delivered": "✓✓", "read": "✓✓ read"}


def _password_option(confirm=False):
    return click.option("--password", envvar="WHATSUP_PASSWORD", prompt=True, hide_input=True,
                        confirmation_prompt=confirm, help="or $WHATSUP_PASSWORD; prompted when absent")


def _as_option(f):
    return click.option("--as", "user", required=True, metavar="USER", help="who you are")(f)


def _connect(ctx, user=None, password=None):
    server = ctx.obj["server"]
    try:
        client = Client(server)
        if user is not None:
            state = ClientState(server, user)
            client.last_seq = client.acked_seq = state.load()
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
    if frame["type"] == "msg":
        return f"[{_stamp(frame['ts'])}] {frame['from']}: {frame['body']}  (id {frame['id']})"
    if frame["type"] == "receipt":
        return f"[{_stamp(frame['ts'])}] {TICKS[frame['status']]} {frame['status']} by {frame['from']}: " + \
            ", ".join(frame["ids"])
    return json.dumps(frame)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="WHATSUP_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="whatsupd address host:port (or $WHATSUP_SERVER)")
@click.pass_context
def main(ctx, server):
    """Talk to a whatsup server."""
    ctx.obj = {"server": server}


@main.command()
@click.argument("user")
@_password_option(confirm=True)
@click.pass_context
def register(ctx, user, password):
    """Create the account USER."""
    with _connect(ctx) as client:
        try:
            client.register(user, password)
        except ServerError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
    click.echo(f"registered {user}")


@main.command()
@_as_option
@_password_option()
@click.argument("peer")
@click.argument("text")
@click.pass_context
def send(ctx, user, password, peer, text):
    """Send TEXT to PEER; returns after ✓ and prints the message id."""
    with _connect(ctx, user, password) as client:
        try:
            answer = client.send(peer, text)
        except ServerError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
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
            if frame["type"] not in ("msg", "receipt"):
                continue
            seen += 1
            click.echo(json.dumps(frame, ensure_ascii=False) if as_json else _line(frame))
        client.flush_acks()
        client.ping()  # the acks are in once the pong is back
        client.state.save(client.last_seq)


@main.command()
@_as_option
@_password_option()
@click.argument("peer")
@click.pass_context
def chat(ctx, user, password, peer):
    """Chat with PEER: type a line to send it, Ctrl-D to quit. Ticks: ✓ sent, ✓✓ delivered, read."""
    client = _connect(ctx, user, password)
    lock = threading.Lock()
    mine = {}  # message id -> text
    shown = {}  # message id -> the highest tick shown (✓ can arrive after ✓✓: it waits for fsync)

    def tick(mid, status):
        if list(TICKS).index(status) > shown.get(mid, -1):
            shown[mid] = list(TICKS).index(status)
            show(f"  {TICKS[status]} {mine.get(mid, mid)}")
    interval = float(client.hello.get("idle_timeout", 90)) / 3

    def show(text):
        with lock:
            click.echo(text)
            sys.stdout.flush()  # a pipe is block-buffered; a chat line must show now

    def receive():
        try:
            while True:
                with lock:
                    frame = client.recv(0.2)
                if frame is None:
                    continue
                kind = frame["type"]
                if kind == "msg":
                    show(_line(frame))
                    if frame["from"] == peer:
                        with lock:
                            client.send_frame({"type": "read", "ref": 0, "to": peer, "ids": [frame["id"]]})
                elif kind == "sent":
                    tick(frame["id"], "sent")
                elif kind == "receipt":
                    for mid in frame["ids"]:
                        tick(mid, frame["status"])
                elif kind == "error" and frame.get("ref") != 0:
                    show(f"! {frame['code']}: {frame['message']}")
                client.state.save(client.last_seq)
        except (Closed, OSError) as exc:
            show(f"! disconnected: {exc}")

    def keepalive():
        while True:
            time.sleep(interval)
            with lock:
                client.send_frame({"type": "ping"})

    threading.Thread(target=receive, daemon=True).start()
    threading.Thread(target=keepalive, daemon=True).start()
    click.echo(f"chatting with {peer} as {user}; Ctrl-D to quit")
    for text in sys.stdin:
        text = text.rstrip("\n")
        if not text:
            continue
        with lock:
            frame = client.send_nowait(peer, text)
        mine[frame["id"]] = text
    with lock:
        client.close()


if __name__ == "__main__":
    main()
