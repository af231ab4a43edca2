"""The client session (c2s): one process per connection, implementing docs/PROTOCOL.md.

The connection's greenlet *is* the process. The socket does not get a reader
greenlet of its own: a libev read watcher hands each chunk of bytes to the
mailbox as ``("data", bytes)`` and then stops until the process has handled
it, so a client that floods is throttled by TCP instead of filling memory.

Mailbox messages::

    ("data", bytes) / ("eof", why)      from the socket watcher
    ("reply", frame)                    an answer from the router (sent, ok, error)
    ("poke",)                           the user's offd queue has something new
    ("replaced",)                       the user logged in elsewhere
    ("tick", now)                       the node's sweeper: check the deadlines
    ("shutdown",)                       the node is stopping

Outgoing frames are gathered while the mailbox has more to do and written with
one send when it is empty, so a burst costs one system call, not one per frame.
"""
import logging
import os
import socket
import time

import gevent

from . import protocol
from .accounts import UserTaken
from .runtime.factory import ShardDown
from .protocol import Code, ProtocolError, error_frame

log = logging.getLogger("whatsup.session")


class SessionState:
    """Everything a session knows; kept apart from the code so a reload can swap the code."""

    def __init__(self, node, sock, addr):
        self.node = node
        self.sock = sock
        self.addr = addr
        self.fd = sock.fileno()
        self.decoder = protocol.FrameDecoder(node.cfg["protocol.max_frame"])
        self.watcher = None
        self.version = None
        self.user = None
        self.out = []
        self.opened = self.last_in = time.monotonic()
        self.frames_in = self.frames_out = 0

    def __repr__(self):
        return (f"<SessionState {self.user or '-'} from {self.addr} v={self.version} "
                f"out={len(self.out)} in={self.frames_in} sent={self.frames_out}>")


class Session:
    """The session behaviour (gen_server callbacks); see the module docstring."""
    kind = "session"
    vsn = 1

    @staticmethod
    def init(proc, node, sock, addr):
        st = SessionState(node, sock, addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(node.cfg["protocol.send_timeout"])
        st.watcher = gevent.get_hub().loop.io(st.fd, 1)
        Session._read_on(proc, st)
        node.counters["connections"] += 1
        return st

    @staticmethod
    def describe(st):
        return {"user": st.user, "addr": st.addr, "version": st.version, "frames_in": st.frames_in,
                "frames_out": st.frames_out, "idle": round(time.monotonic() - st.last_in, 3),
                "unflushed": len(st.out)}

    @staticmethod
    def handle_info(proc, msg, st):
        tag = msg[0]
        if tag == "data":
            Session._data(proc, st, msg[1])
        elif tag == "reply":
            Session._send(st, msg[1])
        elif tag == "poke":
            Session._push(proc, st)
        elif tag == "eof":
            proc.stop(("closed", msg[1]))
        elif tag == "replaced":
            Session._close(proc, st, Code.REPLACED, "logged in from another connection")
        elif tag == "tick":
            Session._tick(proc, st, msg[1])
        elif tag == "shutdown":
            Session._close(proc, st, Code.SHUTTING_DOWN, "the server is stopping")
        else:
            log.warning("session %r: unexpected message %.200r", proc.pid, msg)
        if not len(proc.mailbox):
            try:
                Session._flush(st)
            except OSError as exc:  # includes the send timeout of a device that stopped reading
                proc.stop(("closed", f"send failed: {exc}"))
        return st

    @staticmethod
    def terminate(proc, reason, st):
        if st.watcher is not None:
            st.watcher.stop()
        if isinstance(reason, tuple) and reason[0] == "crash":
            Session._send(st, error_frame(Code.INTERNAL, "server error; reconnect and retry"))
        try:  # a last error frame, if the device still reads
            st.sock.settimeout(1.0)
            Session._flush(st)
        except OSError:
            pass
        st.node.presence.gone(proc.pid)
        if st.user is not None and st.node.sm.unregister(st.user, proc.pid):
            st.node.presence.offline(st.user)
        st.node.counters["disconnections"] += 1
        log.debug("session %r (%s) ended: %s", proc.pid, st.user, reason)
        st.sock.close()

    # --- socket ------------------------------------------------------------------

    @staticmethod
    def _read_on(proc, st):
        def readable():
            """Runs on the hub: never blocks, never raises."""
            try:
                data = os.read(st.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                data, why = b"", exc.strerror
            else:
                why = "closed by peer"
            st.watcher.stop()
            proc.mailbox.put(("data", data) if data else ("eof", why))
        st.watcher.start(readable)

    @staticmethod
    def _send(st, frame):
        st.out.append(protocol.encode(frame))

    @staticmethod
    def _flush(st):
        if st.out:
            data = b"".join(st.out)
            st.frames_out += len(st.out)
            st.out = []
            st.sock.sendall(data)

    @staticmethod
    def _close(proc, st, code, message):
        Session._send(st, error_frame(code, message))
        log.info("session %r (%s, %s): closing: %s", proc.pid, st.user, st.addr, code)
        proc.stop(("closed", code))

    @staticmethod
    def _tick(proc, st, now):
        cfg = st.node.cfg
        if st.user is None and now - st.opened > cfg["protocol.login_timeout"]:
            Session._close(proc, st, Code.IDLE_TIMEOUT, "no login within protocol.login_timeout")
        if now - st.last_in > cfg["protocol.idle_timeout"]:
            Session._close(proc, st, Code.IDLE_TIMEOUT, "nothing received within protocol.idle_timeout")

    # --- frames -------------------------------------------------------------------

    @staticmethod
    def _data(proc, st, data):
        st.last_in = time.monotonic()
        try:
            frames = st.decoder.feed(data)
        except protocol.FramingError as exc:  # the stream is lost: answer, then close
            Session._refuse(proc, st, exc)
            proc.stop(("closed", exc.code))
        for frame in frames:
            st.frames_in += 1
            try:
                if isinstance(frame, ProtocolError):
                    raise frame
                Session._frame(proc, st, *protocol.parse(frame))
            except ProtocolError as exc:
                Session._refuse(proc, st, exc)
                if exc.code in protocol.CLOSING:
                    proc.stop(("closed", exc.code))
            except ShardDown as exc:  # a store shard is restarting: the device may retry
                Session._refuse(proc, st, ProtocolError(Code.STORE_FAILED, str(exc), frame.get("ref")))
        Session._read_on(proc, st)

    @staticmethod
    def _refuse(proc, st, exc):
        st.node.counters["error:" + exc.code] += 1
        log.info("session %r (%s, %s): refused frame: %s: %s", proc.pid, st.user, st.addr,
                 exc.code, exc.message)
        Session._send(st, exc.frame())

    @staticmethod
    def _frame(proc, st, ftype, f):
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
            return st.node.groups.message(st.user, proc.pid, f)
        st.node.router.message(st.user, proc.pid, f["ref"], f["id"], f["to"], body)

    @staticmethod
    def _ack(proc, st, f):
        spool = st.node.offd.current(st.user)
        # While the shard restarts the ack is dropped: the items come again and are acked again.
        if spool is not None and st.node.sm.lookup(st.user) == proc.pid:
            done = spool.ack(st.user, f["seq"])
            st.node.router.acked(st.user, done)
            Session._push(proc, st)

    @staticmethod
    def _read(proc, st, f):
        if "group" in f:
            st.node.groups.members_of(st.user, f["group"], f["ref"])
        st.node.router.read(st.user, proc.pid, f["ref"], f["to"], f["ids"], f.get("group"))

    @staticmethod
    def _hello(st, f):
        common = set(f["versions"]) & set(protocol.VERSIONS)
        if not common:
            raise ProtocolError(Code.UNSUPPORTED_VERSION,
                                f"server speaks versions {list(protocol.VERSIONS)}", f["ref"])
        st.version = max(common)
        cfg = st.node.cfg
        Session._send(st, {"type": "hello", "ref": f["ref"], "version": st.version,
                           "server": st.node.server_name, "max_frame": cfg["protocol.max_frame"],
                           "max_body": cfg["protocol.max_body"],
                           "idle_timeout": cfg["protocol.idle_timeout"]})

    @staticmethod
    def _register(proc, st, f):
        user, ref = f["user"], f["ref"]
        if not protocol.USERNAME.match(user):
            raise ProtocolError(Code.BAD_USERNAME, "user names are 1-32 of A-Z a-z 0-9 _ . -", ref)
        if not protocol.MIN_PASSWORD <= len(f["password"]) <= protocol.MAX_PASSWORD:
            raise ProtocolError(Code.BAD_PASSWORD, f"passwords are {protocol.MIN_PASSWORD}-"
                                f"{protocol.MAX_PASSWORD} characters", ref)
        try:
            st.node.accounts.register(user, f["password"])
        except UserTaken:
            raise ProtocolError(Code.USER_TAKEN, f"{user!r} is taken", ref) from None
        except OSError as exc:
            log.error("registration of %s failed: %s", user, exc)
            raise ProtocolError(Code.STORE_FAILED, "could not store the account; retry", ref) from None
        log.info("registered %s from %s", user, st.addr)
        Session._send(st, {"type": "ok", "ref": ref, "user": user})

    @staticmethod
    def _login(proc, st, f):
        user, ref = f["user"], f["ref"]
        if not st.node.accounts.verify(user, f["password"]):
            log.info("failed login for %r from %s", user, st.addr)
            raise ProtocolError(Code.AUTH_FAILED, "wrong user name or password", ref)
        node = st.node
        q = node.offd.spool(user).queue(user)
        st.user = proc.entity = user
        old = node.sm.register(user, proc.pid)
        if old is not None:
            node.router.tell(old, ("replaced",))
        else:
            node.presence.online(user)
        q.sent = 0
        node.counters["logins"] += 1
        Session._send(st, {"type": "ok", "ref": ref, "user": user, "queued": len(q)})
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
        if room > 0:
            for item in q.unsent(room):
                st.out.append(protocol.frame_bytes(item.frame))


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
}
