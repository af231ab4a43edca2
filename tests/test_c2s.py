"""The connection core (whatsup/c2s/core.py) with a fake clock: no socket, no sleeping."""
import pytest

from whatsup import protocol
from whatsup.c2s.core import Close, Conn, Limits
from whatsup.protocol import Code, ProtocolError
from whatsup.store.offd.memory import MemorySpool
from whatsup.testing import FakeClock

LIMITS = Limits(max_frame=1 << 16, max_body=100, login_timeout=30.0, idle_timeout=90.0, send_timeout=20.0,
                max_inflight=2, max_outbound=1000, window=3, rate_burst=1.0, rate_strikes=3,
                max_password=8, rates={"msg": 2.0})


def conn(limits=LIMITS):
    clock = FakeClock()
    return Conn(limits, clock), clock


def feed(c, *frames):
    c.received(b"".join(protocol.encode(f) for f in frames))
    out = []
    while (f := c.next_frame()) is not None:
        out.append(f)
    return out


def logged_in():
    c, clock = conn()
    c.hello({"versions": [1], "ref": 1})
    c.logged_in("alice")
    return c, clock


def closed(c):
    """The code a deadline check closes the connection with (it must close)."""
    with pytest.raises(Close) as close:
        c.expired()
    return close.value.code


def msg(ref):
    return {"type": "msg", "ref": ref, "to": "bob", "id": f"m{ref}", "body": "hi"}


def test_frames_come_in_order_hello_first_then_login():
    c, _ = conn()
    c.admit("ping", {})  # always
    with pytest.raises(ProtocolError) as exc:
        c.admit("login", {"ref": 1})
    assert exc.value.code == Code.HELLO_REQUIRED
    c.admit("hello", {"ref": 1})
    c.hello({"versions": [1, 99], "ref": 1})
    assert c.version == 1
    with pytest.raises(ProtocolError) as exc:
        c.admit("msg", msg(2))
    assert exc.value.code == Code.NOT_LOGGED_IN
    c.admit("login", {"ref": 3})
    c.logged_in("alice")
    with pytest.raises(ProtocolError) as exc:
        c.admit("login", {"ref": 4})
    assert exc.value.code == Code.ALREADY_LOGGED_IN


def test_no_login_within_login_timeout_closes_and_the_deadline_is_armed_once():
    c, clock = conn()
    assert c.arm() == clock.now + 30.0
    assert c.arm() is None  # armed already
    clock.now += 29.0
    c.expired()  # not yet
    clock.now += 2.0
    assert closed(c) == Code.IDLE_TIMEOUT


def test_received_frames_move_the_idle_deadline_on():
    c, clock = logged_in()
    first = c.arm()
    assert first == clock.now + 90.0
    clock.now += 80.0
    feed(c, {"type": "ping"})
    clock.now = first + 1.0  # the first deadline fires: nothing is due, the next one is armed
    c.expired()
    assert c.arm() == first + 80.0
    clock.now += 80.0
    assert closed(c) == Code.IDLE_TIMEOUT


def test_frames_stop_at_max_inflight_and_resume_as_answers_come():
    c, _ = logged_in()
    c.received(b"".join(protocol.encode(msg(r)) for r in (1, 2, 3)))
    for ref in (1, 2):
        assert c.next_frame()["ref"] == ref
        c.awaiting_answer(ref)
    assert c.next_frame() is None and c.paused  # two in flight: the third waits (reading stops)
    assert c.answered({"type": "typing", "from": "bob"}) is False  # a relay answers nothing
    assert c.answered({"type": "sent", "ref": 1, "id": "m1", "ts": 1}) is True
    assert c.next_frame()["ref"] == 3
    assert c.next_frame() is None and not c.paused
    assert c.frames_out == 2 and c.inflight == 1


def test_a_device_that_takes_no_byte_for_send_timeout_is_a_slow_reader():
    c, clock = logged_in()
    c.arm()
    c.send({"type": "pong"})
    assert c.wrote(0) is True  # the socket refused: a send deadline, sooner than the idle one
    assert c.arm() == clock.now + 20.0
    clock.now += 10.0
    assert c.wrote(0) is False  # still stalled since the first refusal
    clock.now += 11.0
    assert closed(c) == Code.SLOW_READER


def test_bytes_taken_restart_the_send_deadline_and_an_empty_buffer_clears_it():
    c, clock = logged_in()
    c.send({"type": "pong"})
    c.wrote(0)
    clock.now += 15.0
    c.out = c.out[2:]
    c.wrote(2)  # some taken: stalled from now on, not from before
    clock.now += 15.0
    c.expired()
    c.out.clear()
    c.wrote(len(c.out))
    assert c.stalled_since is None


def test_the_outbound_buffer_bounds_pushes_and_overflows_into_slow_reader():
    c, _ = logged_in()
    assert c.push_room(unacked=1) == (2, 500)
    c.out += b"x" * 600
    assert c.push_room(unacked=3) == (0, -100) and not c.overflowing()
    c.out += b"x" * 401
    assert c.overflowing()


def test_frames_over_the_rate_cost_strikes_and_no_strikes_left_closes_with_flooding():
    c, clock = logged_in()
    c.admit("msg", msg(1))
    c.admit("msg", msg(2))  # the burst: rate 2/s for 1 s
    refused = 0
    with pytest.raises(Close) as close:
        for ref in range(3, 10):
            try:
                c.admit("msg", msg(ref))
            except ProtocolError as exc:
                assert exc.code == Code.RATE_LIMITED
                refused += 1
    assert close.value.code == Code.FLOODING and refused == 3  # three strikes; out, it closes
    assert "too many msg frames" in close.value.message


def test_the_rate_refills_with_time():
    c, clock = logged_in()
    for ref in (1, 2):
        c.admit("msg", msg(ref))
    with pytest.raises(ProtocolError):
        c.admit("msg", msg(3))
    clock.now += 0.5  # one token back at 2/s
    c.admit("msg", msg(4))


def test_a_body_is_checked_against_max_body_in_bytes():
    c, _ = logged_in()
    c.check_body({"body": "é" * 50, "ref": 1})
    for body, code in (("", Code.EMPTY_BODY), ("é" * 51, Code.BODY_TOO_LARGE)):
        with pytest.raises(ProtocolError) as exc:
            c.check_body({"body": body, "ref": 1})
        assert exc.value.code == code


def test_a_framing_error_comes_after_the_frames_before_it():
    c, _ = logged_in()
    c.received(protocol.encode({"type": "ping"}) + b"\xff\xff\xff\xff")
    first, second = c.next_frame(), c.next_frame()
    assert first == {"type": "ping"} and isinstance(second, ProtocolError)
    assert second.code in protocol.CLOSING


def refusal(fn, *args):
    with pytest.raises(ProtocolError) as exc:
        fn(*args)
    return exc.value.code


def test_a_login_is_refused_until_its_password_checks_and_then_ends_the_login_deadline():
    c, clock = conn()
    c.hello({"versions": [1], "ref": 1})
    login_deadline = c.arm()
    assert refusal(c.check_login, 2, False) == Code.AUTH_FAILED
    assert refusal(c.check_login, 3, None) == Code.TOO_MANY_ATTEMPTS  # too many failures: not checked
    assert refusal(c.check_login, 4, True, {"reason": "spam"}) == Code.BANNED
    assert c.user is None and refusal(c.admit, "msg", msg(5)) == Code.NOT_LOGGED_IN
    clock.now += 20.0
    c.check_login(6, True)
    c.logged_in("alice")
    c.admit("msg", msg(7))
    clock.now = login_deadline + 1.0  # the login deadline's wake-up finds nothing due...
    c.expired()
    assert c.arm() == c.opened + 90.0  # ... and the idle deadline alone is armed


def test_a_password_longer_than_max_password_is_not_worth_a_hash():
    c, _ = conn()
    assert c.worth_hashing("x" * 8) and not c.worth_hashing("x" * 9)


def test_bytes_trickling_in_do_not_move_the_login_deadline():
    c, clock = conn()
    c.received(b"\x00\x00\x00\x40")  # a header whose body never comes...
    for _ in range(29):
        clock.now += 1.0
        c.received(b"\x80")  # ... a byte a second keeps the idle deadline away, not the login one
        assert c.next_frame() is None
    clock.now += 2.0
    with pytest.raises(Close) as close:
        c.expired()
    assert close.value.code == Code.IDLE_TIMEOUT and "login" in close.value.message


def test_pings_before_login_are_rated_too():
    c, _ = conn(LIMITS._replace(rates={"ping": 2.0}))
    c.admit("ping", {}), c.admit("ping", {})
    assert refusal(c.admit, "ping", {"ref": 1}) == Code.RATE_LIMITED
    assert c.version is None


def test_each_rated_frame_type_has_its_own_bucket():
    c, _ = logged_in_with(rates={"msg": 1.0, "read": 1.0, "ack": 1.0})
    c.admit("read", {"ref": 1})
    assert refusal(c.admit, "read", {"ref": 2}) == Code.RATE_LIMITED
    c.admit("msg", msg(3)), c.admit("ack", {"seq": 1})
    assert refusal(c.admit, "ack", {"seq": 2}) == Code.RATE_LIMITED
    c.admit("typing", {"ref": 4})  # no rate: no bucket
    c.admit("typing", {"ref": 5})


def test_garbage_and_refusals_share_the_strikes_that_close_with_flooding():
    c, clock = logged_in_with(rates={"ping": 1.0})
    c.strike("undecodable or ill-formed")
    c.admit("ping", {})
    assert refusal(c.admit, "ping", {}) == Code.RATE_LIMITED  # the second strike
    clock.now += 10.0 / LIMITS.rate_strikes  # one strike forgiven (rate_strikes/10 per second)
    c.strike("undecodable or ill-formed"), c.strike("undecodable or ill-formed")  # the third, fourth
    with pytest.raises(Close) as close:
        c.strike("undecodable or ill-formed")
    assert close.value.code == Code.FLOODING and "undecodable" in close.value.message


def logged_in_with(**limits):
    c, clock = conn(LIMITS._replace(**limits))
    c.hello({"versions": [1], "ref": 1})
    c.logged_in("alice")
    return c, clock


def queued(n, body="hi"):
    """An in-memory spool holding ``n`` messages for alice."""
    spool = MemorySpool(1000)
    for i in range(n):
        spool.put("alice", "msg", {"type": "msg", "from": "bob", "id": f"m{i}", "body": body})
    return spool


def taken(c):
    """The frames in ``out``, all taken by the socket."""
    frames = [protocol.decode(body) for body in protocol.FrameDecoder(1 << 16).split(bytes(c.out), 10_000)]
    c.out.clear()
    return frames


def test_queued_items_go_out_within_the_window_and_an_ack_opens_it_again():
    c, _ = logged_in()
    spool = queued(5)
    assert spool.login("alice", c.device) == 5
    c.push(spool)
    assert [f["seq"] for f in taken(c)] == [1, 2, 3]  # session.window
    c.push(spool)
    assert taken(c) == []  # nothing until an ack
    spool.ack("alice", c.device, 2)
    c.push(spool)
    assert [f["seq"] for f in taken(c)] == [4, 5]


def test_queued_items_fill_only_the_first_half_of_the_outbound_buffer():
    c, _ = logged_in_with(window=100)
    spool = queued(20, body="x" * 90)  # about 130 bytes a frame; half the buffer is 500
    c.out += b"\0" * 200                 # an answer the socket has not taken yet
    c.push(spool)
    assert 200 < len(c.out) < 500 + 200 and spool.unacked("alice", c.device) == 3
    c.out.clear()                        # taken
    c.push(spool)
    assert [f["seq"] for f in taken(c)] == [4, 5, 6, 7]
