"""``whatsup chat``: a terminal chat that survives disconnects (docs/PROTOCOL.md, "Messages and ticks").

Three parts, so the logic is tested without a terminal:

* :class:`Ticks`, I/O-free: the user's own messages and the ticks each has
  (✓ sent, ✓✓ delivered, read; per member in a group, summarised "✓✓ 3/5").
* a screen: :class:`TerminalScreen` on a terminal (prompt_toolkit keeps the
  line being typed below what arrives, and a message's line is rewritten in
  place when its ticks change), :class:`PlainScreen` on a pipe (one new line
  per change).
* :class:`Chat`: one network thread owns the :class:`~whatsup.client.Connection`
  (which reconnects with backoff and keeps unsent lines in its outbox); the
  main thread reads what the user types and hands it over through a queue.
"""
import collections
import math
import queue
import shutil
import sys
import threading
import time

from ..client import BodyTooLarge, Closed, LoggedInElsewhere, ServerError
from .render import describe, stamp

HELP = """commands:
  /help   this list
  /quit   leave (Ctrl-D too); lines still waiting for their ✓ are sent first
ticks: … waiting to be sent, ✓ on the server's disk, ✓✓ delivered, ✓✓ read (in a group,
per member: "✓✓ 2/5" = delivered to 2 of the 5 others)"""
TYPING_EVERY = 3.0    # seconds between two typing frames sent while the user types
TYPING_SHOWN = 6.0    # seconds a peer's "typing" stays shown without news
LINGER = 10.0         # seconds /quit waits for the ✓ of lines still in the outbox


class Mine:
    """One of the user's messages and what is known of it."""
    __slots__ = ("text", "ts", "sent", "delivered", "read", "failed")

    def __init__(self, text, ts):
        self.text, self.ts = text, ts
        self.sent, self.delivered, self.read, self.failed = False, set(), set(), None


class Ticks:
    """The user's own messages and their ticks, for a 1:1 chat or a group (I/O-free).

    ``apply(frame)`` takes a ``sent``, a ``receipt`` or an error that gave a
    message up and returns the ids whose line changed; ``line(id)`` is that
    line. In a group each member's ✓✓ and read count; ``others`` (the other
    members, None while unknown) turns them into "d/n".
    """

    def __init__(self, group=None, others=None):
        self.group, self.others = group, others
        self.mine = collections.OrderedDict()

    def add(self, mid, text, ts):
        self.mine[mid] = Mine(text, ts)

    def apply(self, frame):
        kind = frame.get("type")
        if kind == "sent" and frame.get("id") in self.mine:
            self.mine[frame["id"]].sent = True
            return [frame["id"]]
        if kind == "receipt" and frame.get("group") == self.group:
            changed = [mid for mid in frame["ids"] if mid in self.mine]
            for mid in changed:
                m = self.mine[mid]
                (m.read if frame["status"] == "read" else m.delivered).add(frame["from"])
            return changed
        if kind == "error" and frame.get("id") in self.mine:
            self.mine[frame["id"]].failed = frame.get("code")
            return [frame["id"]]
        return []

    def ticks(self, mid):
        m = self.mine[mid]
        if m.failed:
            return f"✗ {m.failed}"
        read, delivered = len(m.read), len(m.read | m.delivered)
        if not (m.sent or delivered):
            return "…"
        n = self.others if self.group is not None else 1
        if n is not None and read >= n:
            return "✓✓ read"
        if not delivered:
            return "✓"
        if self.group is None:
            return "✓✓"
        if n is not None and delivered >= n:
            text = "✓✓"
        else:
            text = f"✓✓ {delivered}/{n}" if n is not None else f"✓✓ {delivered}"
        if read:
            text += f" read {read}/{n}" if n is not None else f" read {read}"
        return text

    def line(self, mid):
        m = self.mine[mid]
        return f"[{stamp(m.ts)}] me: {m.text}  {self.ticks(mid)}"

    def waiting(self):
        """How many messages have neither ✓ nor a refusal yet."""
        return sum(1 for m in self.mine.values() if not (m.sent or m.delivered or m.read or m.failed))


class PlainScreen:
    """Lines on a pipe: every change is a new line (nothing can be rewritten)."""

    def __init__(self, out=None):
        self._out = out
        self.lock = threading.Lock()  # the network thread shows lines, the main thread /help
        self.typing = None

    @property
    def out(self):
        return self._out or sys.stdout  # looked up each time: patch_stdout replaces sys.stdout

    def show(self, text, key=None):
        with self.lock:
            self._print(text, key)

    def _print(self, text, key):
        self.out.write(text + "\n")
        self.out.flush()  # a pipe is block-buffered; a chat line must show now

    def update(self, text, key=None):
        self.show(text, key)

    def set_typing(self, text):
        if text and text != self.typing:
            self.show(text)
        self.typing = text


class TerminalScreen(PlainScreen):
    """A terminal: the line being typed stays at the bottom (prompt_toolkit's patch_stdout prints
    above it), and ``update`` rewrites a message's line where it is: the cursor goes up as many
    rows as were printed since (saved and restored around it). A line that scrolled off, or
    that would wrap onto another number of rows, is printed anew instead."""

    def __init__(self, out=None, size=shutil.get_terminal_size):
        super().__init__(out)
        self.size = size
        self.rows = 0            # rows printed so far
        self.where = {}          # key -> (row of its line, its height in rows)
        self.typing = None
        self.app = None          # the prompt_toolkit Application, to redraw the prompt

    def _height(self, text, columns):
        from prompt_toolkit.utils import get_cwidth
        return max(1, math.ceil(get_cwidth(text) / max(1, columns)))

    def _print(self, text, key):
        height = self._height(text, self.size().columns)
        if key is not None:
            self.where[key] = (self.rows, height)
        self.rows += height
        super()._print(text, key)

    def update(self, text, key=None):
        with self.lock:
            columns, lines = self.size()
            row, height = self.where.get(key, (None, 0))
            up = self.rows - row if row is not None else lines
            if up >= lines - 2 or self._height(text, columns) != height:
                return self._print(text, key)
            self.out.write(f"\x1b7\x1b[{up}A\r\x1b[2K{text}\x1b8")
            self.out.flush()

    def set_typing(self, text):
        self.typing = text
        if self.app is not None:
            self.app.invalidate()

    def prompt(self):
        return f"{self.typing} > " if self.typing else "> "


class Chat:
    """One ``whatsup chat`` session: see the module docstring."""

    def __init__(self, conn, me, peer=None, group=None, screen=None):
        self.conn, self.me, self.peer, self.group = conn, me, peer, group
        self.screen = screen or PlainScreen()
        self.ticks = Ticks(group)
        self.commands = queue.Queue()
        self.typing_from = {}     # who -> until when their typing is shown
        self.typing_sent = 0.0
        self.quitting = None      # when /quit was asked (lines may still wait for their ✓)
        self.outcome = None       # why the chat ended, for the exit status
        self.done = threading.Event()
        self.down = False         # the connection is lost and not back yet
        conn.on_status = self.status

    # --- the user's side (main thread) -------------------------------------------------

    def typed(self, text):
        """A line the user typed: a command, or a message."""
        text = text.rstrip("\n")
        if not text.strip():
            return
        if text.strip() == "/help":
            self.screen.show(HELP)
        elif text.strip() == "/quit":
            self.commands.put(("quit",))
        elif text.startswith("/") and not text.startswith("//"):
            self.screen.show(f"! unknown command {text.split()[0]} (/help lists them)")
        else:
            self.commands.put(("send", text[1:] if text.startswith("//") else text))

    def keystroke(self):
        """The line being typed changed: tell the peer, at most every TYPING_EVERY seconds."""
        now = time.monotonic()
        if now - self.typing_sent >= TYPING_EVERY:
            self.typing_sent = now
            self.commands.put(("typing",))

    # --- the network thread ------------------------------------------------------------

    def run_network(self):
        try:
            self._loop()
        except LoggedInElsewhere:
            self.outcome = "replaced"
            self.screen.show(f"-- logged in elsewhere: another device or command logged in as {self.me}; "
                             f"this chat ends (start it again to take the session back)")
        except ServerError as exc:
            self.outcome = "refused"
            self.screen.show(f"! cannot log in: {exc.code}: {exc.message}")
        finally:
            self.conn.close()
            self.done.set()

    def _loop(self):
        conn = self.conn
        while True:
            while True:
                try:
                    command = self.commands.get_nowait()
                except queue.Empty:
                    break
                self._command(command)
            if self.quitting is not None and (not self.ticks.waiting() or
                                              time.monotonic() - self.quitting > LINGER):
                left = self.ticks.waiting()
                if left:
                    self.screen.show(f"-- {left} message(s) still without ✓: {self.fate()}")
                self.outcome = self.outcome or "quit"
                return
            frame = conn.recv(0.1)
            if frame is not None:
                self.handle(frame)
            self._expire_typing()

    def fate(self):
        """What becomes of the messages still in the outbox when the chat ends."""
        if self.conn.state is not None:  # saved with the device's state
            return f"kept, they go out the next time {self.me} chats"
        return "not sent (the server was never reached)"

    def _command(self, command):
        kind = command[0]
        if kind == "send":
            text = command[1]
            try:
                mid = self.conn.send(self.peer, text, group=self.group)
            except BodyTooLarge as exc:
                self.screen.show(f"! not sent: {exc}")
                return
            self.ticks.add(mid, text, time.time() * 1000)
            self.screen.show(self.ticks.line(mid), key=mid)
        elif kind == "typing":
            self.conn.typing(self.peer, self.group)
        elif kind == "quit" and self.quitting is None:
            self.quitting = time.monotonic()
            if self.ticks.waiting():
                self.screen.show(f"-- waiting for the ✓ of {self.ticks.waiting()} message(s) "
                                 f"(at most {LINGER:g} s)")

    def _ours(self, frame):
        if self.group is not None:
            return frame.get("group") == self.group
        return "group" not in frame and frame.get("from") == self.peer

    def handle(self, frame):
        kind = frame.get("type")
        changed = self.ticks.apply(frame)
        for mid in changed:
            self.screen.update(self.ticks.line(mid), key=mid)
        if changed or kind in ("sent", "receipt"):
            return
        if kind == "msg":
            if self._ours(frame):
                self.typing_from.pop(frame["from"], None)
                self._show_typing()
                self.conn.read(frame["from"], [frame["id"]], self.group)
            self.screen.show(describe(frame, self.me))
        elif kind == "typing":
            if self._ours(frame):
                if frame["state"] == "paused":
                    self.typing_from.pop(frame["from"], None)
                else:
                    self.typing_from[frame["from"]] = time.monotonic() + TYPING_SHOWN
                self._show_typing()
        elif kind == "group_event":
            if frame["group"] == self.group:
                self._members()
            self.screen.show(describe(frame, self.me))
        else:
            self.screen.show(describe(frame, self.me))

    def status(self, event, detail):
        """The connection's news, on one line per outage: rewritten while it lasts."""
        if event == "connected":
            self.screen.update(f"-- {'reconnected' if self.down else 'connected'} to {detail}", key="link")
            self.down = False
            earlier = [k for k in self.conn.outbox.frames if isinstance(k, str) and k not in self.ticks.mine]
            if earlier:
                self.screen.show(f"-- sending {len(earlier)} message(s) typed in an earlier chat")
            if self.group is not None:
                self._members()
        else:
            lost = "disconnected" if self.conn.hello is not None else f"cannot reach {self.conn.server}"
            text = f"-- {lost}: {detail} (what you type waits)"
            (self.screen.update if self.down else self.screen.show)(text, key="link")
            self.down = True

    def _members(self):
        try:
            info = self.conn.request({"type": "group_info", "group": self.group})
        except ServerError as exc:
            self.screen.show(f"! group {self.group}: {exc.code}: {exc.message}")
        except Closed:
            return
        else:
            self.ticks.others = len(info["members"]) - 1

    def _expire_typing(self):
        now = time.monotonic()
        gone = [who for who, until in self.typing_from.items() if until < now]
        for who in gone:
            del self.typing_from[who]
        if gone:
            self._show_typing()

    def _show_typing(self):
        who = sorted(self.typing_from)
        self.screen.set_typing(f"{', '.join(who)} {'is' if len(who) == 1 else 'are'} typing…" if who else None)


def run(conn, me, peer, group):
    """Run a chat until /quit, Ctrl-D, or a login elsewhere; returns its outcome."""
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    screen = TerminalScreen() if tty else PlainScreen()
    chat = Chat(conn, me, peer, group, screen)
    screen.show(f"chatting {'in ' + group if group else 'with ' + peer} as {me}; "
                f"/help for commands, /quit or Ctrl-D to leave")
    if peer is not None:
        conn.follow(peer)
    conn.connect()
    net = threading.Thread(target=chat.run_network, name="chat-network", daemon=True)
    net.start()
    try:
        (_terminal_input if tty else _plain_input)(chat, screen)
        net.join()
    except KeyboardInterrupt:  # Ctrl-C while /quit waits for ✓: leave now, and say what is lost
        left = chat.ticks.waiting()
        sys.stdout.write(f"\n-- interrupted{f': {left} message(s) without ✓ {chat.fate()}' if left else ''}\n")
        return "interrupted"
    return chat.outcome


def _plain_input(chat, screen):
    """stdin lines on a daemon thread, so a chat that ends by itself need not wait for one."""
    def read():
        for line in sys.stdin:
            chat.typed(line)
        chat.commands.put(("quit",))
    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    chat.done.wait()


def _terminal_input(chat, screen):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session = PromptSession(lambda: screen.prompt(), erase_when_done=True)  # the line comes back
    # as the message's own line, with its ticks
    session.default_buffer.on_text_changed += lambda buffer: buffer.text and chat.keystroke()  # not
    # when the buffer empties after a line went out
    screen.app = session.app

    def stop():
        chat.done.wait()
        app = session.app
        if app.is_running:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))
    threading.Thread(target=stop, name="chat-stop", daemon=True).start()
    with patch_stdout(raw=True):
        while not chat.done.is_set():
            try:
                chat.typed(session.prompt())
            except (EOFError, KeyboardInterrupt):
                chat.commands.put(("quit",))
                break
        chat.done.wait()
