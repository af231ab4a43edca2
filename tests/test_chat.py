"""``whatsup chat`` and the reconnecting client: the I/O-free parts directly, then the real thing
under a pty against a real node that is killed with -9 and restarted mid-conversation."""
import os
import time

import pexpect
import pyte
import pytest

from whatsup.cli.chat import Ticks
from whatsup.client import Backoff, BodyTooLarge, Connection, LoggedInElsewhere, Outbox, Seen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- I/O-free parts ---------------------------------------------------------------------

def test_a_messages_ticks_only_go_up_whatever_order_they_come_in():
    t = Ticks()
    t.add("m1", "hi", 0)
    assert t.ticks("m1") == "…"
    assert t.apply({"type": "receipt", "status": "delivered", "from": "bob", "ids": ["m1"]}) == ["m1"]
    assert t.ticks("m1") == "✓✓"  # ✓✓ may come before ✓ (✓ waits for the fsync)
    t.apply({"type": "sent", "id": "m1", "ts": 1})
    assert t.ticks("m1") == "✓✓"
    t.apply({"type": "receipt", "status": "read", "from": "bob", "ids": ["m1"]})
    assert t.ticks("m1") == "✓✓ read" and t.line("m1").endswith("me: hi  ✓✓ read")
    assert t.apply({"type": "receipt", "status": "read", "from": "bob", "ids": ["other"]}) == []
    t.add("m2", "to nobody", 0)
    t.apply({"type": "error", "code": "unknown_user", "id": "m2"})
    assert t.ticks("m2") == "✗ unknown_user" and t.waiting() == 0


def test_a_group_messages_ticks_are_summarised_per_member():
    t = Ticks(group="g1", others=5)
    t.add("m", "Saturday?", 0)
    t.apply({"type": "sent", "id": "m"})
    assert t.ticks("m") == "✓"
    for member in ("bob", "carol", "dave"):
        t.apply({"type": "receipt", "status": "delivered", "from": member, "ids": ["m"], "group": "g1"})
    assert t.ticks("m") == "✓✓ 3/5"
    t.apply({"type": "receipt", "status": "read", "from": "erin", "ids": ["m"], "group": "g1"})
    assert t.ticks("m") == "✓✓ 4/5 read 1/5"  # a read implies the member got it
    assert t.apply({"type": "receipt", "status": "read", "from": "x", "ids": ["m"], "group": "g2"}) == []
    for member in ("bob", "carol", "dave", "frank"):
        t.apply({"type": "receipt", "status": "read", "from": member, "ids": ["m"], "group": "g1"})
    assert t.ticks("m") == "✓✓ read"


def test_backoff_doubles_up_to_its_cap_with_jitter_and_starts_over_after_a_success():
    draws = iter([0.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.0])
    b = Backoff(first=1.0, cap=8.0, random=lambda: next(draws))
    assert [b.next() for _ in range(6)] == [0.5, 2.0, 3.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 0.5


def test_the_outbox_keeps_a_request_until_its_answer_and_resends_it_with_the_same_id():
    box = Outbox()
    box.add("m1", {"type": "msg", "id": "m1"})
    box.add("m2", {"type": "msg", "id": "m2"})
    assert [k for k, _ in box.unsent()] == ["m1", "m2"]
    box.assign(7, "m1")
    box.assign(8, "m2")
    assert box.unsent() == []
    assert box.answer({"type": "sent", "ref": 7, "id": "m1"}) == "m1" and "m1" not in box
    assert box.answer({"type": "error", "ref": 8, "code": "rate_limited"}) == "m2"
    assert [k for k, _ in box.unsent()] == ["m2"]  # kept, to go out again
    box.assign(9, "m2")
    box.reset()  # a new connection: nothing is in flight on it
    assert box.unsent() == [("m2", {"type": "msg", "id": "m2"})]
    assert box.answer({"type": "pong", "ref": 9}) is None


# --- the reconnecting client, for scripts ----------------------------------------------------

def test_a_connection_keeps_what_is_sent_during_an_outage_and_delivers_it_once(server):
    server.register("alice", "bob")
    said = []
    conn = Connection(server.server, "alice", "pw-alice", backoff=Backoff(first=0.05, cap=0.2),
                      on_status=lambda event, detail: said.append(event))
    assert conn.connect()
    conn.send("bob", "before", id="c1")
    assert conn.recv(5)["id"] == "c1"
    with pytest.raises(BodyTooLarge, match="max_body"):
        conn.send("bob", "x" * (conn.hello["max_body"] + 1))
    server.kill()
    assert conn.recv(0.5) is None and not conn.connected  # it noticed, and keeps trying
    conn.send("bob", "during", id="c2")
    conn.read("bob", ["nothing-yet"])
    server.start()
    assert conn.recv(15)["id"] == "c2" and said.count("connected") == 2
    assert len(conn.outbox) <= 1  # the read waits at most for its ok
    with server.client("bob", seen=Seen(size=0)) as bob:  # no dedup on bob's side: count copies
        bodies = [f["body"] for f in bob.drain(1.0) if f["type"] == "msg"]
    assert sorted(bodies) == ["before", "during"]
    server.client("alice").close()  # alice logs in elsewhere
    with pytest.raises(LoggedInElsewhere):
        while True:
            conn.recv(5)
    assert not conn.connected


def test_what_a_connection_could_not_send_is_sent_by_the_next_run_once(server, tmp_path):
    server.register("alice", "bob")
    fast = dict(backoff=Backoff(first=0.05, cap=0.2), state_dir=str(tmp_path / "state"))
    first = Connection(server.server, "alice", "pw-alice", **fast)
    assert first.connect()
    server.kill()
    assert first.recv(0.3) is None and not first.connected
    first.send("bob", "typed while the server was down", id="later-1")
    first.close()  # the run ends with the message still in its outbox
    server.start()
    again = Connection(server.server, "alice", "pw-alice", **fast)
    assert again.connect()
    assert again.recv(10)["id"] == "later-1" and len(again.outbox) == 0
    again.close()
    with server.client("bob", seen=Seen(size=0)) as bob:
        assert [f["id"] for f in bob.drain(1.0) if f["type"] == "msg"] == ["later-1"]


# --- whatsup chat under a pty ---------------------------------------------------------------

class Terminal:
    """``whatsup chat`` in a pty, its output fed to a terminal emulator (pyte) so the test sees the
    screen a user sees, and the raw bytes to check that no traceback ever reached it."""

    def __init__(self, args, env, rows=30, columns=100):
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.Stream(self.screen)
        self.raw = []
        self.child = pexpect.spawn(os.path.join(ROOT, "bin", "whatsup"), args, env=env,
                                   dimensions=(rows, columns), encoding="utf-8", timeout=30)

    def pump(self):
        try:
            data = self.child.read_nonblocking(65536, timeout=0.1)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            return
        self.raw.append(data)
        self.stream.feed(data)

    def lines(self):
        return [line.rstrip() for line in self.screen.display if line.strip()]

    def wait_for(self, predicate, what, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if predicate(self.lines()):
                return self.lines()
        raise AssertionError(f"no {what} on screen:\n" + "\n".join(self.lines()))

    def shows(self, text, timeout=30):
        return self.wait_for(lambda lines: any(text in line for line in lines), repr(text), timeout)

    def type(self, line):
        self.child.send(line + "\r")


def ticked(tick, *texts):
    """The screen shows exactly one line for each of the user's ``texts``, ending with ``tick``."""
    def check(lines):
        for text in texts:
            found = [line for line in lines if f"me: {text}  " in line]
            if len(found) != 1 or not found[0].endswith("  " + tick):
                return False
        return True
    return check


def test_chat_survives_a_kill_9_keeps_every_typed_line_and_ends_on_a_login_elsewhere(server, tmp_path):
    server.register("alice", "bob")
    env = {**os.environ, "WHATSUP_SERVER": server.server, "WHATSUP_PASSWORD": "pw-alice",
           "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    term = Terminal(["chat", "--as", "alice", "bob"], env)
    bob = server.client("bob", seen=Seen(size=0))  # no dedup: a second copy would be counted
    try:
        term.shows("-- connected to")
        term.type("before the crash")
        got = bob.recv(10)
        assert got["type"] == "typing"  # alice's keystrokes were shown to bob
        while got is not None and got["type"] != "msg":
            got = bob.recv(10)
        assert got["body"] == "before the crash"
        bob.read("alice", [got["id"]])
        term.wait_for(ticked("✓✓ read", "before the crash"), "one line ending ✓✓ read")
        bob.typing("alice")
        term.shows("bob is typing…")  # in the prompt line, until bob's next message or pause

        server.kill()
        bob.close()
        term.shows("-- disconnected")
        term.type("typed during the outage")
        term.type("and another")
        term.wait_for(ticked("…", "typed during the outage", "and another"), "the lines waiting (…)")

        server.start()
        term.shows("-- reconnected")
        term.wait_for(ticked("✓", "typed during the outage", "and another"), "their ✓")
        with server.client("bob", seen=Seen(size=0)) as bob:
            bodies = [f["body"] for f in bob.drain(1.5) if f["type"] == "msg"]
        assert bodies == ["typed during the outage", "and another"]  # once each, in order
        term.wait_for(ticked("✓✓", "typed during the outage", "and another"), "their ✓✓, in place")

        server.client("alice").close()  # alice logs in elsewhere
        term.shows("logged in elsewhere")
        term.child.expect(pexpect.EOF, timeout=15)
        term.child.close()
        assert term.child.exitstatus == 0
    finally:
        bob.close()
        if term.child.isalive():
            term.child.terminate(force=True)
    assert "Traceback" not in "".join(term.raw)


def test_reading_each_message_of_a_burst_as_it_comes_tells_the_sender_read_for_every_one(server):
    """The server takes a read only for messages the device acked, and a burst's ack goes out
    after its last item: the connection acks what it handed out before a read goes out."""
    server.register("alice", "bob")
    with server.client("alice") as alice:
        ids = [alice.send("bob", f"m{i}")["id"] for i in range(10)]
    bob = Connection(server.server, "bob", "pw-bob")
    assert bob.connect()
    got = []
    while len(got) < len(ids):
        frame = bob.recv(10)
        assert frame is not None, got
        if frame["type"] == "msg":
            got.append(frame["id"])
            bob.read("alice", [frame["id"]])
    deadline = time.monotonic() + 10
    while len(bob.outbox) and time.monotonic() < deadline:
        bob.recv(0.2)
    bob.close()
    with server.client("alice") as alice:
        read = [i for f in alice.drain(1.0) if f["type"] == "receipt" and f["status"] == "read"
                for i in f["ids"]]
    assert sorted(read) == sorted(ids)
