"""The client session (c2s): one process per connection, implementing docs/PROTOCOL.md.

The connection's greenlet *is* the process. The socket does not get a reader
greenlet of its own: a libev read watcher hands each chunk of bytes to the
mailbox as ``("data", bytes)`` and then stops until the process has handled
it, so a client that floods is throttled by TCP instead of filling memory.
The socket is non-blocking both ways and read through its own ``recv``, so
a TLS socket (whose fd carries encrypted bytes) takes the same path: the
watcher reads what OpenSSL can decrypt, plus what it already holds
(``pending()``), and treats "want read/write" as "nothing yet".

Mailbox messages::

    ("data", bytes) / ("eof", why)      from the socket watcher
    ("writable",)                       the socket takes bytes again (write watcher)
    ("reply", frame)                    an answer from the router (sent, ok, error)
    ("poke",)                           the user's offd queue has something new (coalesced)
    ("replaced",)                       the user logged in elsewhere
    ("close", code, message)            the operator or the account closes it (banned, kicked...)
    ("tick", when)                      a deadline of this session may be due (node.timers, coalesced)
    ("shutdown",)                       the node is stopping

Outgoing frames are gathered in one buffer while the mailbox has more to do
and written when it is empty, so a burst costs one system call, not one per
frame. Bounds, each a setting (docs/PROTOCOL.md, "Limits"):

* queued items go out within ``session.window`` unacked items *and* while the
  buffer holds less than half of ``session.max_outbound`` bytes; the rest of
  the buffer is for answers, and a device that lets it overflow, or takes no
  byte for ``protocol.send_timeout`` seconds, is closed with ``slow_reader``
  (unacked items stay in offd for its next login);
* at ``session.max_inflight`` requests awaiting their answer the session stops
  handling frames, and reading its socket, until answers come back
  (backpressure through TCP);
* rated frame types (``[ratelimit]``) spend a token bucket each; a refusal
  costs a strike, and a connection out of strikes is closed with ``flooding``.
"""
import collections
import functools
import logging
import socket
import ssl
import time

import gevent

from . import latency, protocol
from .accounts import UserTaken
from .admission import Refused, prefix
from .runtime.factory import ShardDown
from .protocol import Code, ProtocolError, error_frame
from .ratelimit import FrameBuckets, TokenBucket
from .runtime.process import FAIR_SHARE

log = logging.getLogger("whatsup.session")
#: What a non-blocking socket (plain or TLS) raises when it has nothing to give or take now.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
READ_SIZE = 65536


class SessionState:
    """Everything a session knows; kept apart from the code so a reload can swap the code."""

    def __init__(self, node, sock, addr):
        self.node = node
        self.sock = sock
        self.addr = addr
        self.fd = sock.fileno()
        self.pending = getattr(sock, "pending", None)  # TLS sockets only
        cfg = node.cfg
        self.decoder = protocol.FrameDecoder(cfg["protocol.max_frame"])
        self.watcher = self.write_watcher = None
        self.version = None
        self.user = None
        self.out = bytearray()
        self.opened = self.last_in = time.monotonic()
        self.stalled_since = None  # since when the socket takes none of a non-empty buffer
        self.due = None          # the deadline this session has in node.timers (login, idle, send)
        self.frames_in = self.frames_out = 0
        self.inflight = 0        # msg/read requests handed on, not yet answered
        self.awaiting = collections.Counter()  # their refs (other "reply"s are relays, not answers)
        self.backlog = ()        # decoded frames waiting for inflight to drop (a deque while any do)
        self.paused = False      # reading stopped at session.max_inflight
        self.buckets = FrameBuckets(_limits(cfg), cfg["session.rate_burst"])
        self.strikes = None      # a TokenBucket from the first refused frame on
        self.refused = 0         # frames refused (only the first is logged)

    def __repr__(self):
        return (f"<SessionState {self.user or '-'} from {self.addr} v={self.version} "
                f"out={len(self.out)}B inflight={self.inflight} in={self.frames_in} "
                f"sent={self.frames_out}>")


@functools.lru_cache(maxsize=4)
def _limits(cfg):
    """``{frame type: frames per second}`` of the [ratelimit] table, one dict for all sessions."""
    return vars(cfg.ratelimit)


class Session:
    """The session behaviour (gen_server callbacks); see the module docstring."""
    kind = "session"
    vsn = 1

    @staticmethod
    def init(proc, node, sock, addr):
        st = SessionState(node, sock, addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(0.0)
        st.watcher = gevent.get_hub().loop.io(st.fd, 1)  # the write watcher only once one is needed
        Session._read_on(proc, st)
        Session._arm(proc, st)
        node.counters["connections"] += 1
        return st

    @staticmethod
    def describe(st):
        return {"user": st.user, "addr": st.addr, "version": st.version, "frames_in": st.frames_in,
                "frames_out": st.frames_out, "idle": round(time.monotonic() - st.last_in, 3),
                "unflushed": len(st.out), "inflight": st.inflight, "paused": st.paused}

    @staticmethod
    def handle_info(proc, msg, st):
        tag = msg[0]
        if tag == "data":
            Session._data(proc, st, msg[1])
        elif tag == "reply":
            Session._answered(proc, st, msg[1])
        elif tag in ("poke", "writable"):  # something new to send, or room to send it
            Session._push(proc, st)
        elif tag == "eof":
            proc.stop(("closed", msg[1]))
        elif tag == "replaced":
            Session._close(proc, st, Code.REPLACED, "logged in from another connection")
        elif tag == "close":  # ("close", code, message): banned, kicked... (whatsup/lifecycle.py)
            Session._close(proc, st, msg[1], msg[2])
        elif tag == "tick":
            Session._tick(proc, st)
        elif tag == "shutdown":
            Session._close(proc, st, Code.SHUTTING_DOWN, "the server is stopping")
        else:
            log.warning("session %r: unexpected message %.200r", proc.pid, msg)
        if not len(proc.mailbox):
            Session._flush(proc, st)
        return st

    @staticmethod
    def terminate(proc, reason, st):
        for watcher in (st.watcher, st.write_watcher):
            if watcher is not None:
                watcher.stop()
        if isinstance(reason, tuple) and reason[0] == "crash":
            Session._send(st, error_frame(Code.INTERNAL, "server error; reconnect and retry"))
        try:  # a last error frame, if the socket takes it now
            Session._write(proc, st)
        except OSError:
            pass
        st.node.presence.gone(proc.pid)
        if st.user is not None and st.node.sm.unregister(st.user, proc.pid):
            st.node.presence.offline(st.user)
        st.node.counters["disconnections"] += 1
        st.node.counters["frames_in"] += st.frames_in  # whatsup.metrics adds the live sessions' own
        st.node.counters["frames_out"] += st.frames_out
        log.debug("session %r (%s) ended: %s", proc.pid, st.user, reason)
        st.sock.close()

    # --- socket ------------------------------------------------------------------

    @staticmethod
    def _read_on(proc, st):
        def readable():
            """Runs on the hub: never blocks, never raises."""
            try:
                data = st.sock.recv(READ_SIZE)
                while data and st.pending is not None and st.pending():
                    data += st.sock.recv(st.pending())  # TLS: decrypted bytes OpenSSL holds
            except WOULD_BLOCK:
                return
            except OSError as exc:
                data, why = b"", exc.strerror or str(exc)
            else:
                why = "closed by peer"
            st.watcher.stop()
            proc.mailbox.put(("data", data) if data else ("eof", why))
        st.watcher.start(readable)

    @staticmethod
    def _send(st, frame):
        st.out += protocol.encode(frame)
        st.frames_out += 1

    @staticmethod
    def _flush(proc, st):
        """Write what the socket takes now; wait for writability for the rest, within bounds."""
        try:
            Session._write(proc, st)
        except OSError as exc:
            proc.stop(("closed", f"send failed: {exc.strerror or exc}"))
        if len(st.out) > st.node.cfg["session.max_outbound"]:
            Session._close(proc, st, Code.SLOW_READER, f"more than session.max_outbound "
                                                       f"({st.node.cfg['session.max_outbound']}) bytes unread")
        if st.out and st.write_watcher is None:
            st.write_watcher = gevent.get_hub().loop.io(st.fd, 2)
        if st.out and not st.write_watcher.active:
            def writable():
                st.write_watcher.stop()
                proc.mailbox.put(("writable",))
            st.write_watcher.start(writable)

    @staticmethod
    def _write(proc, st):
        """Non-blocking: send until the socket would block. Raises OSError if the peer is gone."""
        sent = False
        while st.out:
            try:
                n = st.sock.send(st.out[:READ_SIZE])
            except WOULD_BLOCK:
                n = 0
            if not n:  # a TLS socket answers 0 rather than raising
                break
            del st.out[:n]
            sent = True
        if not st.out:
            st.stalled_since = None
        elif sent or st.stalled_since is None:
            stalled, st.stalled_since = st.stalled_since, time.monotonic()
            if stalled is None:
                Session._arm(proc, st)

    @staticmethod
    def _close(proc, st, code, message):
        Session._send(st, error_frame(code, message))
        log.info("session %r (%s, %s): closing: %s: %s", proc.pid, st.user, st.addr, code, message)
        proc.stop(("closed", code))

    @staticmethod
    def _tick(proc, st):
        now = time.monotonic()
        cfg = st.node.cfg
        if st.user is None and now - st.opened > cfg["protocol.login_timeout"]:
            Session._close(proc, st, Code.IDLE_TIMEOUT, "no login within protocol.login_timeout")
        if now - st.last_in > cfg["protocol.idle_timeout"]:
            Session._close(proc, st, Code.IDLE_TIMEOUT, "nothing received within protocol.idle_timeout")
        if st.stalled_since is not None and now - st.stalled_since > cfg["protocol.send_timeout"]:
            Session._close(proc, st, Code.SLOW_READER, "no byte taken within protocol.send_timeout")
        st.due = None  # the entry that woke us is spent (frames since moved the deadline on)
        Session._arm(proc, st)

    @staticmethod
    def _arm(proc, st):
        """Make sure node.timers wakes this session by its earliest deadline. An entry due later
        than needed is added to, never moved: the one already there finds nothing due."""
        cfg = st.node.cfg
        when = st.last_in + cfg["protocol.idle_timeout"]
        if st.user is None:
            when = min(when, st.opened + cfg["protocol.login_timeout"])
        if st.stalled_since is not None:
            when = min(when, st.stalled_since + cfg["protocol.send_timeout"])
        if st.due is None or when < st.due:
            st.due = when
            st.node.timers.notify_at(when, proc.pid, ("tick", when))

    @staticmethod
    def _answered(proc, st, frame):
        """A frame to send from elsewhere: an answer to one of this session's requests (frames
        resume below the bound), or a relay (typing, presence) that answers nothing."""
        Session._send(st, frame)
        ref = frame.get("ref")
        if st.awaiting.get(ref):
            st.awaiting[ref] -= 1
            if not st.awaiting[ref]:
                del st.awaiting[ref]
            st.inflight -= 1
            if st.paused:
                Session._work(proc, st)

    # --- frames -------------------------------------------------------------------

    @staticmethod
    def _data(proc, st, data):
        st.last_in = time.monotonic()
        # a framing error comes last, after the frames before it: they are answered, then it
        # closes the connection (its code is in protocol.CLOSING)
        frames = st.decoder.split(data, FAIR_SHARE)  # bodies, decoded in turn by _work; the rest
        if st.backlog:                                # of the read stays in the decoder
            st.backlog.extend(frames)
        else:
            st.backlog = collections.deque(frames)
        Session._work(proc, st)

    @staticmethod
    def _work(proc, st):
        """Handle decoded frames while under session.max_inflight (one read may hold a thousand
        requests); read the socket again only once all of them are handled."""
        limit = st.node.cfg["session.max_inflight"]
        while st.inflight < limit:
            if not st.backlog:
                more = st.decoder.split(b"", FAIR_SHARE)
                if not more:
                    break
                st.backlog = collections.deque(more)
            frame = st.backlog.popleft()
            st.frames_in += 1
            if not st.frames_in % FAIR_SHARE:
                gevent.sleep(0)  # one read can hold a thousand frames: let the others run
            if type(frame) is bytes:
                frame = protocol.decode(frame)
            try:
                if isinstance(frame, ProtocolError):
                    raise frame
                Session._frame(proc, st, *protocol.parse(frame))
            except ProtocolError as exc:
                Session._refuse(proc, st, exc)
                if exc.code in protocol.CLOSING:
                    proc.stop(("closed", exc.code))
                if exc.code in protocol.GARBAGE:
                    Session._strike(proc, st, "undecodable or ill-formed")
            except ShardDown as exc:  # a store shard is restarting: the device may retry
                Session._refuse(proc, st, ProtocolError(Code.STORE_FAILED, str(exc), frame.get("ref")))
        st.paused = bool(st.backlog) or st.decoder.ready()
        if not st.paused:
            st.backlog = ()  # an empty deque holds 600 bytes
            Session._read_on(proc, st)

    @staticmethod
    def _refuse(proc, st, exc):
        """Answer a refused frame; log the connection's first refusal only (the node's counters
        count them all): a log record costs ~40 µs, more than the refusal itself."""
        st.node.counters["error:" + exc.code] += 1
        if not st.refused:
            log.info("session %r (%s, %s): refused frame: %s: %s (later ones are counted, not logged)",
                     proc.pid, st.user, st.addr, exc.code, exc.message)
        st.refused += 1
        Session._send(st, exc.frame())

    @staticmethod
    def _frame(proc, st, ftype, f):
        bucket = st.buckets.get(ftype)  # first: a flood of pings before login is rated too
        if bucket is not None and not bucket.take():
            Session._strike(proc, st, ftype)
            raise ProtocolError(Code.RATE_LIMITED, f"more than {bucket.rate:g} {ftype} frames per "
                                f"second; slow down", f.get("ref"))
        if ftype == "ping":
            return Session._send(st, {"type": "pong", **({"ref": f["ref"]} if "ref" in f else {})})
        if st.version is None:
            if ftype != "hello":
                raise ProtocolError(Code.HELLO_REQUIRED, "send hello first", f.get("ref"))
            return Session._hello(st, f)
        if ftype == "hello":
            raise ProtocolError(Code.BAD_FIELD, "hello was already sent", f["ref"])
        if ftype in ("register", "login"):
            if st.user is not None:
                raise ProtocolError(Code.ALREADY_LOGGED_IN, f"logged in as {st.user}", f["ref"])
            return (Session._register if ftype == "register" else Session._login)(proc, st, f)
        if st.user is None:
            raise ProtocolError(Code.NOT_LOGGED_IN, "log in first", f.get("ref"))
        owner, method = ROUTES[ftype]
        if owner is None:
            return getattr(Session, method)(proc, st, f)
        answer = getattr(getattr(st.node, owner), method)(st.user, proc.pid, f)
        if answer is not None:
            Session._send(st, answer)

    @staticmethod
    def _msg(proc, st, f):
        body = f["body"]
        if not body:
            raise ProtocolError(Code.EMPTY_BODY, "the body is empty", f["ref"])
        size = len(body.encode())
        if size > st.node.cfg["protocol.max_body"]:
            raise ProtocolError(Code.BODY_TOO_LARGE, f"body of {size} bytes exceeds "
                                f"max_body {st.node.cfg['protocol.max_body']}", f["ref"])
        if "group" in f:
            st.node.groups.message(st.user, proc.pid, f)
        else:
            st.node.router.message(st.user, proc.pid, f["ref"], f["id"], f["to"], body)
        Session._awaiting(st, f["ref"])

    @staticmethod
    def _ack(proc, st, f):
        spool = st.node.offd.current(st.user)
        # While the shard restarts the ack is dropped: the items come again and are acked again.
        if spool is not None and st.node.sm.lookup(st.user) == proc.pid:
            st.node.router.acked(st.user, spool, f["seq"])
            Session._push(proc, st)

    @staticmethod
    def _read(proc, st, f):
        if "group" in f:
            st.node.groups.members_of(st.user, f["group"], f["ref"])
        st.node.router.read(st.user, proc.pid, f["ref"], f["to"], f["ids"], f.get("group"))
        Session._awaiting(st, f["ref"])

    @staticmethod
    def _awaiting(st, ref):
        """A request whose answer comes later as a ("reply", frame) carrying ``ref``: in flight."""
        st.awaiting[ref] += 1
        st.inflight += 1

    @staticmethod
    def _strike(proc, st, ftype):
        """A rated frame was refused, or a frame was garbage; out of strikes, the connection is
        closed (decoding garbage costs the hub several times what a valid frame does)."""
        if st.strikes is None:
            strikes = st.node.cfg["session.rate_strikes"]
            st.strikes = TokenBucket(strikes / 10.0, strikes)
        if not st.strikes.take():
            st.node.gate.flooded(st.addr)
            Session._close(proc, st, Code.FLOODING, f"too many {ftype} frames refused")

    @staticmethod
    def _hello(st, f):
        common = set(f["versions"]) & set(protocol.VERSIONS)
        if not common:
            raise ProtocolError(Code.UNSUPPORTED_VERSION,
                                f"server speaks versions {list(protocol.VERSIONS)}", f["ref"])
        st.version = max(common)
        cfg = st.node.cfg
        Session._send(st, {"type": "hello", "ref": f["ref"], "version": st.version,
                           "server": st.node.server_name, "node_id": st.node.node_id,
                           "max_frame": cfg["protocol.max_frame"],
                           "max_body": cfg["protocol.max_body"],
                           "idle_timeout": cfg["protocol.idle_timeout"]})

    @staticmethod
    def _register(proc, st, f):
        user, ref = f["user"], f["ref"]
        protocol.check_account(user, f["password"], vars(st.node.cfg.accounts), ref)
        try:
            with st.node.registration.admit(user, f.get("invite"), ref):  # open, invite or closed
                st.node.accounts.register(user, f["password"], st.addr[0])
        except UserTaken:
            raise ProtocolError(Code.USER_TAKEN, f"{user!r} is taken", ref) from None
        except Refused as exc:
            raise ProtocolError(exc.code, str(exc), ref, exc.retry_after) from None
        except OSError as exc:
            log.error("registration of %s failed: %s", user, exc)
            raise ProtocolError(Code.STORE_FAILED, "could not store the account; retry", ref) from None
        log.info("registered %s from %s", user, st.addr)
        Session._send(st, {"type": "ok", "ref": ref, "user": user})

    @staticmethod
    def _login(proc, st, f):
        started = time.monotonic()
        user, ref = f["user"], f["ref"]
        node, ip = st.node, st.addr[0]
        failed = node.failed_logins
        keys = (("user", user), ("ip", ip), ("prefix", prefix(ip)))
        if not all(failed[kind].allowed(key) for kind, key in keys):
            log.warning("login for %r from %s refused: %s", user, st.addr, Code.TOO_MANY_ATTEMPTS)
            raise ProtocolError(Code.TOO_MANY_ATTEMPTS, "too many failed logins; wait and retry", ref)
        for kind, key in keys:  # charged before hashing, so attempts in parallel cannot all pass
            failed[kind].charge(key)  # the check above
        verified = None
        try:
            verified = (len(f["password"]) <= node.cfg["accounts.max_password"]  # no hash of a
                        and node.accounts.verify(user, f["password"], ip))         # longer one
        except Refused as exc:
            raise ProtocolError(exc.code, str(exc), ref, exc.retry_after) from None
        finally:
            if verified is not False:  # a success, or no answer (busy, store down): not a failed guess
                for kind, key in keys:
                    failed[kind].refund(key)
        if not verified:
            log.info("failed login for %r from %s", user, st.addr)
            raise ProtocolError(Code.AUTH_FAILED, "wrong user name or password", ref)
        ban = node.lifecycle.banned(user)
        if ban is not None:
            raise ProtocolError(Code.BANNED, f"this account is banned: {ban['reason']}", ref)
        q = node.offd.spool(user).queues.get(user)  # None: nothing queued (no empty queue is made)
        st.user = proc.entity = user
        node.gate.authenticated(st.addr)
        old = node.sm.register(user, proc.pid)
        if old is not None:
            node.router.tell(old, ("replaced",))
        else:
            node.presence.online(user)
        if q is not None:
            q.sent = 0
        node.counters["logins"] += 1
        Session._send(st, {"type": "ok", "ref": ref, "user": user, "queued": len(q) if q else 0})
        latency.LOGIN.observe(time.monotonic() - started)
        Session._push(proc, st)

    @staticmethod
    def _push(proc, st):
        """Send queued items up to the flow-control window (only the user's current session)."""
        node = st.node
        if st.user is None or node.sm.lookup(st.user) != proc.pid:
            return
        spool = node.offd.current(st.user)
        q = spool and spool.queues.get(st.user)
        if q is None:  # nothing queued, or the shard restarts and pokes when it is back
            return
        room = node.cfg["session.window"] - q.sent
        budget = node.cfg["session.max_outbound"] // 2 - len(st.out)
        if room > 0 and budget > 0:
            for item in q.unsent(room, budget):
                st.out += protocol.frame_bytes(item.frame)
                st.frames_out += 1


#: What a logged-in session does with each frame type: (node attribute, method) for the
#: features that live in their own module, each called as method(user, pid, frame) and
#: returning an immediate answer or None; (None, name) for Session's own handlers.
ROUTES = {
    "msg": (None, "_msg"),
    "ack": (None, "_ack"),
    "read": (None, "_read"),
    "group_create": ("groups", "create"),
    "group_add": ("groups", "add"),
    "group_remove": ("groups", "remove"),
    "group_leave": ("groups", "leave"),
    "group_admin": ("groups", "set_admin"),
    "group_rename": ("groups", "rename"),
    "group_info": ("groups", "info"),
    "group_list": ("groups", "list"),
    "presence_sub": ("presence", "subscribe"),
    "presence_unsub": ("presence", "unsubscribe"),
    "privacy": ("presence", "privacy"),
    "typing": ("presence", "typing"),
    "block": ("blocks", "block"),
    "unblock": ("blocks", "unblock"),
    "block_list": ("blocks", "list"),
    "passwd": ("lifecycle", "passwd"),
    "delete_account": ("lifecycle", "delete_account"),
    "invite_create": ("registration", "invite_create"),
    "push_register": ("push", "register"),
    "push_unregister": ("push", "unregister"),
}
