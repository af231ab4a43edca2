"""The client connection's core: the rules of one connection, without a socket or a clock.

Implements, for whatsup/c2s/session.py, the per-connection parts of docs/PROTOCOL.md:
"Connection" (hello first, then register/login; the login's verdict; the login and idle
deadlines)
and "Limits" (the inflight bound, the outbound buffer and the slow reader,
rate limits and strikes). A :class:`Conn` is fed bytes and answers, reads
the time from the clock it is given, and says what follows: frames to handle (``next_frame``), a
refusal (``ProtocolError``) or a close (:class:`Close`), the next deadline to
arm, bytes to write (``out``). The session process is the thin adapter: it owns
the socket watchers and the calls into the router, offd and accounts.

Tests drive it with a fake clock (tests/test_c2s.py); the end-to-end tests
prove the adapter.
"""
import collections
from typing import NamedTuple

from .. import protocol
from ..protocol import PRIMARY, Code, ProtocolError
from ..runtime.ratelimit import FrameBuckets, TokenBucket
from ..runtime.process import FAIR_SHARE

#: What a connection may send before it is logged in (after hello): make an account, link a
#: device to one, log in.
PRE_LOGIN = frozenset({"register", "link", "login"})


class Limits(NamedTuple):
    """The settings a connection obeys (docs/PROTOCOL.md, "Limits"), read once per config."""
    max_frame: int
    max_body: int
    login_timeout: float
    idle_timeout: float
    send_timeout: float
    max_inflight: int
    max_outbound: int
    window: int
    rate_burst: float
    rate_strikes: int
    max_password: int  # accounts.max_password: a longer password fails unhashed
    rates: dict  # {frame type: frames per second} of the [ratelimit] table


def limits(cfg):
    """The Limits of ``cfg`` (the node makes one, shared by every connection: c2s.services)."""
    return Limits(cfg.protocol.max_frame, cfg.protocol.max_body, cfg.protocol.login_timeout,
                  cfg.protocol.idle_timeout, cfg.protocol.send_timeout, cfg.session.max_inflight,
                  cfg.session.max_outbound, cfg.session.window, cfg.session.rate_burst,
                  cfg.session.rate_strikes, cfg.accounts.max_password, vars(cfg.ratelimit))


class Close(Exception):
    """The connection must be closed with ``code`` (an error frame carrying ``message`` first)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Conn:
    """One connection's protocol state. ``clock`` (monotonic seconds) is the only source of time,
    shared with its rate limits, so a test drives every deadline and bucket with a fake one.

    Slots: 10,000 idle connections each hold one (idle memory per connection is a target);
    a subclass without slots still takes new attributes (a reload's code_change may add some)."""
    __slots__ = ("limits", "clock", "decoder", "version", "user", "device", "out", "opened", "last_in",
                 "stalled_since", "due", "frames_in", "frames_out", "inflight", "awaiting", "backlog",
                 "paused", "buckets", "strikes", "refused")

    def __init__(self, limits, clock):
        self.limits, self.clock = limits, clock
        now = clock()
        self.decoder = protocol.FrameDecoder(limits.max_frame)
        self.version = None
        self.user = None
        self.device = PRIMARY      # which of the user's devices this is (docs/PROTOCOL.md, "Devices")
        self.out = bytearray()
        self.opened = self.last_in = now
        self.stalled_since = None  # since when the socket takes none of a non-empty buffer
        self.due = None            # the deadline armed (login, idle, send), see ``arm``
        self.frames_in = self.frames_out = 0
        self.inflight = 0          # requests handed on, not yet answered
        self.awaiting = collections.Counter()  # their refs (other frames sent are relays, not answers)
        self.backlog = ()          # decoded frames waiting for inflight to drop (a deque while any do)
        self.paused = False        # frames (and reading) stopped at max_inflight
        self.buckets = FrameBuckets(limits.rates, limits.rate_burst, clock)
        self.strikes = None        # a TokenBucket from the first refused frame on
        self.refused = 0           # frames refused (the adapter logs only the first)

    # --- input ------------------------------------------------------------------

    def received(self, data):
        """Bytes from the socket: cut them into frame bodies, FAIR_SHARE at a time (the rest of
        the read stays in the decoder). A framing error comes last, after the frames before
        it: they are answered, then it closes the connection (protocol.CLOSING)."""
        self.last_in = self.clock()
        frames = self.decoder.split(data, FAIR_SHARE)
        if self.backlog:
            self.backlog.extend(frames)
        else:
            self.backlog = collections.deque(frames)

    def next_frame(self):
        """The next decoded frame (or ProtocolError) to handle, or None: none left, or
        ``max_inflight`` requests await their answers (``paused``: read nothing more)."""
        if self.inflight < self.limits.max_inflight:
            if not self.backlog:
                more = self.decoder.split(b"", FAIR_SHARE)
                if more:
                    self.backlog = collections.deque(more)
            if self.backlog:
                self.frames_in += 1
                frame = self.backlog.popleft()
                return protocol.decode(frame) if type(frame) is bytes else frame
        self.paused = bool(self.backlog) or self.decoder.ready()
        if not self.paused:
            self.backlog = ()  # an empty deque holds 600 bytes
        return None

    def admit(self, ftype, f):
        """Raise ProtocolError if ``ftype`` may not come now (rate, order), Close when the
        connection has no strikes left; else return. The rate comes first: a flood of pings
        before login is rated too; within its rate ``ping`` is always admitted."""
        bucket = self.buckets.get(ftype)
        if bucket is not None and not bucket.take():
            self.strike(ftype)
            raise ProtocolError(Code.RATE_LIMITED, f"more than {bucket.rate:g} {ftype} frames per "
                                f"second; slow down", f.get("ref"))
        if ftype == "ping":
            return
        if self.version is None:
            if ftype != "hello":
                raise ProtocolError(Code.HELLO_REQUIRED, "send hello first", f.get("ref"))
            return
        if ftype == "hello":
            raise ProtocolError(Code.BAD_FIELD, "hello was already sent", f["ref"])
        if ftype in PRE_LOGIN:
            if self.user is not None:
                raise ProtocolError(Code.ALREADY_LOGGED_IN, f"logged in as {self.user}", f["ref"])
            return
        if self.user is None:
            raise ProtocolError(Code.NOT_LOGGED_IN, "log in first", f.get("ref"))

    def hello(self, f):
        """Agree on a version (the answer frame is the adapter's: it names the server)."""
        common = set(f["versions"]) & set(protocol.VERSIONS)
        if not common:
            raise ProtocolError(Code.UNSUPPORTED_VERSION,
                                f"server speaks versions {list(protocol.VERSIONS)}", f["ref"])
        self.version = max(common)

    def worth_hashing(self, password):
        """False for a password longer than accounts.max_password: it fails without a scrypt, so
        a megabyte password costs the node no more than a wrong one."""
        return len(password) <= self.limits.max_password

    def check_login(self, ref, verified, ban=None):
        """Raise the refusal of a login whose password check answered ``verified`` (True, False,
        or None: too many failed logins lately, not checked) for a user whose ban record is
        ``ban``; the connection stays, logged out, its login deadline running."""
        if verified is None:
            raise ProtocolError(Code.TOO_MANY_ATTEMPTS, "too many failed logins; wait and retry", ref)
        if not verified:
            raise ProtocolError(Code.AUTH_FAILED, "wrong user name or password", ref)
        if ban is not None:
            raise ProtocolError(Code.BANNED, f"this account is banned: {ban['reason']}", ref)

    def logged_in(self, user, device=PRIMARY):
        """The connection is ``user``'s ``device`` from now on: its login deadline is over, and
        frames other than hello, register and login are admitted."""
        self.user, self.device = user, device

    def check_body(self, f):
        body = f["body"]
        if not body:
            raise ProtocolError(Code.EMPTY_BODY, "the body is empty", f["ref"])
        size = len(body.encode())
        if size > self.limits.max_body:
            raise ProtocolError(Code.BODY_TOO_LARGE, f"body of {size} bytes exceeds "
                                f"max_body {self.limits.max_body}", f["ref"])

    def strike(self, what):
        """A rated frame was refused, or a frame was garbage (decoding garbage costs the hub
        several times what a valid frame does); out of strikes, Close with ``flooding``."""
        if self.strikes is None:
            self.strikes = TokenBucket(self.limits.rate_strikes / 10.0, self.limits.rate_strikes, self.clock)
        if not self.strikes.take():
            raise Close(Code.FLOODING, f"too many {what} frames refused")

    # --- requests in flight ---------------------------------------------------------

    def awaiting_answer(self, ref):
        """A request handed on whose answer comes later carrying ``ref``: in flight."""
        self.awaiting[ref] += 1
        self.inflight += 1

    def answered(self, frame):
        """``frame`` is to be sent; True when it answers a request in flight (frames may resume)."""
        self.send(frame)
        ref = frame.get("ref")
        if not self.awaiting.get(ref):
            return False
        self.awaiting[ref] -= 1
        if not self.awaiting[ref]:
            del self.awaiting[ref]
        self.inflight -= 1
        return True

    # --- output ------------------------------------------------------------------

    def send(self, frame):
        self.out += protocol.encode(frame)
        self.frames_out += 1

    def wrote(self, sent):
        """The socket took ``sent`` bytes of ``out`` (already removed from it); True when the
        socket just started to refuse bytes (a send deadline to arm)."""
        if not self.out:
            self.stalled_since = None
        elif sent or self.stalled_since is None:
            stalled, self.stalled_since = self.stalled_since, self.clock()
            return stalled is None
        return False

    def overflowing(self):
        """More is buffered than a reading device would leave: close it with ``slow_reader``."""
        return len(self.out) > self.limits.max_outbound

    def push_room(self, unacked):
        """(items, bytes) that may go out now, with ``unacked`` items sent and not yet acked:
        within the window, and only in the first half of the buffer (the rest is for answers)."""
        return self.limits.window - unacked, self.limits.max_outbound // 2 - len(self.out)

    def push(self, spool):
        """Put what waits for this device in ``spool`` (an offd api.Store) into ``out``, as far
        as :meth:`push_room` allows; an ack (or bytes taken) makes room for more."""
        room, budget = self.push_room(spool.unacked(self.user, self.device))
        if room > 0 and budget > 0:
            for item in spool.next_batch(self.user, self.device, self.limits.window, budget):
                self.out += protocol.frame_bytes(item.frame)
                self.frames_out += 1

    # --- deadlines ---------------------------------------------------------------

    def expired(self):
        """Raise Close when a deadline has passed: no login, nothing received, no byte taken."""
        lim, now = self.limits, self.clock()
        if self.user is None and now - self.opened > lim.login_timeout:
            raise Close(Code.IDLE_TIMEOUT, "no login within protocol.login_timeout")
        if now - self.last_in > lim.idle_timeout:
            raise Close(Code.IDLE_TIMEOUT, "nothing received within protocol.idle_timeout")
        if self.stalled_since is not None and now - self.stalled_since > lim.send_timeout:
            raise Close(Code.SLOW_READER, "no byte taken within protocol.send_timeout")
        self.due = None  # the wake-up that asked is spent; the adapter arms the next one

    def arm(self):
        """When the adapter must be woken next, or None when a wake-up early enough is armed
        already (one armed later than needed stays: it finds nothing due and re-arms)."""
        lim = self.limits
        when = self.last_in + lim.idle_timeout
        if self.user is None:
            when = min(when, self.opened + lim.login_timeout)
        if self.stalled_since is not None:
            when = min(when, self.stalled_since + lim.send_timeout)
        if self.due is not None and self.due <= when:
            return None
        self.due = when
        return when
