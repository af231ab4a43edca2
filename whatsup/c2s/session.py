"""The client session: one process per connection, implementing docs/PROTOCOL.md.

The rules of a connection (order of frames, deadlines, flow control, rate
limits) are the I/O-free core in whatsup/c2s/core.py; this is its adapter: the
socket, the process, and the calls into the router, offd and accounts — the
services of whatsup/c2s/services.py, which are all a session can reach.

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
    ("items", [body, ...])              queued items pushed by the user's home node (a cluster)
    ("replaced",)                       the user logged in elsewhere
    ("close", code, message)            the operator or the account closes it (banned, kicked...)
    ("tick",)                           a deadline of this session may be due (services.timers, coalesced)
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
import logging
import socket
import ssl
import time

import gevent

from . import core as c2s
from ..observe import latency
from .. import protocol
from ..store.accounts import UserTaken
from .admission import Refused, prefix
from .core import Close
from ..runtime.factory import ShardDown
from ..protocol import PRIMARY, Code, ProtocolError, error_frame
from ..runtime.process import FAIR_SHARE, let_others_run

log = logging.getLogger("whatsup.session")
#: What a non-blocking socket (plain or TLS) raises when it has nothing to give or take now.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
READ_SIZE = 65536
#: Every session reads into this one buffer (they all read on the hub, one at a time) and keeps
#: an exact-size copy. ``recv(READ_SIZE)`` mallocs 64 KiB and shrinks it to what came: any
#: long-lived allocation made meanwhile pins the rest, and glibc's heap grew ~17 MiB a minute at
#: 1,000 msgs/s (mallinfo2 through the shell), almost all of it free and never handed back.
_INBOX = memoryview(bytearray(READ_SIZE))
TICK = ("tick",)  # one tuple for every deadline entry in services.timers
WRITABLE = ("writable",)


class SessionState(c2s.Conn):
    """Everything a session knows: the connection's core state (c2s.Conn) and its socket; kept
    apart from the code so a reload can swap the code."""

    def __init__(self, services, sock, addr):
        super().__init__(services.limits, time.monotonic)
        self.services = services
        self.sock = sock
        self.addr = addr
        self.fd = sock.fileno()
        self.pending = getattr(sock, "pending", None)  # TLS sockets only
        self.watcher = self.write_watcher = None
        self.on_readable = None  # made by Session._read_on

    def __repr__(self):
        return (f"<SessionState {self.user or '-'} from {self.addr} v={self.version} "
                f"out={len(self.out)}B inflight={self.inflight} in={self.frames_in} "
                f"sent={self.frames_out}>")


class Session:
    """The session behaviour (gen_server callbacks); see the module docstring."""
    kind = "session"
    vsn = 1

    @staticmethod
    def init(proc, services, sock, addr):
        st = SessionState(services, sock, addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(0.0)
        st.watcher = gevent.get_hub().loop.io(st.fd, 1)  # the write watcher only once one is needed
        Session._read_on(proc, st)
        Session._arm(proc, st)
        services.counters["connections"] += 1
        return st

    @staticmethod
    def describe(st):
        return {"user": st.user, "device": st.device, "addr": st.addr, "version": st.version, "frames_in": st.frames_in,
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
        elif tag == "items":  # from the user's home node: it keeps the window (whatsup/cluster/homes.py)
            for body in msg[1]:
                st.out += protocol.frame_bytes(body)
            st.frames_out += len(msg[1])
        elif tag == "eof":
            proc.stop(("closed", msg[1]))
        elif tag == "replaced":
            Session._close(proc, st, Code.REPLACED, "logged in from another connection")
        elif tag == "close":  # ("close", code, message): banned, kicked... (whatsup/users/lifecycle.py)
            Session._close(proc, st, msg[1], msg[2])
        elif tag == "tick":
            try:
                st.expired()
            except Close as close:
                Session._close(proc, st, close.code, close.message)
            Session._arm(proc, st)
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
            st.send(error_frame(Code.INTERNAL, "server error; reconnect and retry"))
        try:  # a last error frame, if the socket takes it now
            Session._write(proc, st)
        except OSError:
            pass
        st.services.presence.gone(proc.pid)
        homes = st.services.homes
        if homes is not None:
            homes.gone(proc.pid)
        remote = st.user is not None and homes is not None and not homes.here(st.user)
        if st.user is not None and st.services.sm.unregister(st.user, st.device, proc.pid) and not remote:
            st.services.presence.offline(st.user)
        if remote:  # the user's home keeps their presence
            homes.detach(st.user, st.device, proc.pid)
        st.services.counters["disconnections"] += 1
        st.services.counters["frames_in"] += st.frames_in  # whatsup.observe.metrics adds the live sessions' own
        st.services.counters["frames_out"] += st.frames_out
        log.debug("session %r (%s) ended: %s", proc.pid, st.user, reason)
        st.sock.close()

    # --- socket ------------------------------------------------------------------

    @staticmethod
    def _read_on(proc, st):
        """Watch the socket for the next chunk, with the callback made once per session: a
        closure made per read (or an arguments tuple) was 4 (1) objects more for every gen-0
        collection to walk, with 5,000 sessions reading. It calls the process's current
        behaviour, so a reloaded module's ``_readable`` takes over at the next read."""
        if getattr(st, "on_readable", None) is None:  # (a state made by older code has none)
            st.on_readable = lambda: proc.behaviour._readable(proc, st)
        st.watcher.start(st.on_readable)

    @staticmethod
    def _readable(proc, st):
        """Runs on the hub: never blocks, never raises."""
        try:
            data = _INBOX[:st.sock.recv_into(_INBOX)].tobytes()
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

    @staticmethod
    def _flush(proc, st):
        """Write what the socket takes now; wait for writability for the rest, within bounds."""
        try:
            Session._write(proc, st)
        except OSError as exc:
            proc.stop(("closed", f"send failed: {exc.strerror or exc}"))
        if st.overflowing():
            Session._close(proc, st, Code.SLOW_READER, f"more than session.max_outbound "
                                                       f"({st.limits.max_outbound}) bytes unread")
        if st.out and st.write_watcher is None:
            st.write_watcher = gevent.get_hub().loop.io(st.fd, 2)
        if st.out and not st.write_watcher.active:
            st.write_watcher.start(Session._writable, proc, st)

    @staticmethod
    def _writable(proc, st):
        st.write_watcher.stop()
        proc.mailbox.put(WRITABLE)

    @staticmethod
    def _write(proc, st):
        """Non-blocking: send until the socket would block. Raises OSError if the peer is gone."""
        sent = 0
        while st.out:
            try:
                n = st.sock.send(st.out[:READ_SIZE])
            except WOULD_BLOCK:
                n = 0
            if not n:  # a TLS socket answers 0 rather than raising
                break
            del st.out[:n]
            sent += n
        if st.wrote(sent):
            Session._arm(proc, st)

    @staticmethod
    def _close(proc, st, code, message):
        st.send(error_frame(code, message))
        log.info("session %r (%s, %s): closing: %s: %s", proc.pid, st.user, st.addr, code, message)
        proc.stop(("closed", code))

    @staticmethod
    def _arm(proc, st):
        """Have services.timers wake this session by its earliest deadline (c2s.Conn.arm)."""
        when = st.arm()
        if when is not None:
            st.services.timers.notify_at(when, proc.pid, TICK)

    @staticmethod
    def _answered(proc, st, frame):
        """A frame to send from elsewhere: an answer to one of this session's requests (frames
        resume below the bound), or a relay (typing, presence) that answers nothing."""
        if st.answered(frame) and st.paused:
            Session._work(proc, st)

    # --- frames -------------------------------------------------------------------

    @staticmethod
    def _data(proc, st, data):
        st.received(data)
        Session._work(proc, st)

    @staticmethod
    def _work(proc, st):
        """Handle decoded frames while under session.max_inflight (one read may hold a thousand
        requests); read the socket again only once all of them are handled."""
        while True:
            frame = st.next_frame()
            if frame is None:
                break
            if not st.frames_in % FAIR_SHARE:
                let_others_run()  # one read can hold a thousand frames
            try:
                Session._handle(proc, st, frame)
            except Close as close:
                if close.code == Code.FLOODING:
                    st.services.gate.flooded(st.addr)
                Session._close(proc, st, close.code, close.message)
        if not st.paused:
            Session._read_on(proc, st)

    @staticmethod
    def _handle(proc, st, frame):
        """One frame (or the ProtocolError its decoding gave): refusals are answered; a
        garbage frame costs a strike (c2s.Close when none is left)."""
        try:
            if isinstance(frame, ProtocolError):
                raise frame
            Session._frame(proc, st, *protocol.parse(frame))
        except ProtocolError as exc:
            Session._refuse(proc, st, exc)
            if exc.code in protocol.CLOSING:
                proc.stop(("closed", exc.code))
            if exc.code in protocol.GARBAGE:
                st.strike("undecodable or ill-formed")
        except ShardDown as exc:  # a store shard is restarting: the device may retry
            Session._refuse(proc, st, ProtocolError(Code.STORE_FAILED, str(exc), frame.get("ref")))

    @staticmethod
    def _refuse(proc, st, exc):
        """Answer a refused frame; log the connection's first refusal only (the node's counters
        count them all): a log record costs ~40 µs, more than the refusal itself."""
        st.services.counters["error:" + exc.code] += 1
        if not st.refused:
            log.info("session %r (%s, %s): refused frame: %s: %s (later ones are counted, not logged)",
                     proc.pid, st.user, st.addr, exc.code, exc.message)
        st.refused += 1
        st.send(exc.frame())

    @staticmethod
    def _frame(proc, st, ftype, f):
        st.admit(ftype, f)
        if ftype == "ping":
            return st.send({"type": "pong", **({"ref": f["ref"]} if "ref" in f else {})})
        if ftype == "hello":
            return Session._hello(st, f)
        if ftype in c2s.PRE_LOGIN:
            return ACCOUNT_ROUTES[ftype](proc, st, f)
        homes = st.services.homes
        if homes is not None and homes.elsewhere(ftype, st.user, proc.pid, f):
            return  # served by the home of whom it concerns; the answer comes as a reply
        answer = ROUTES[ftype](proc, st, f)
        if answer is not None:
            st.send(answer)

    @staticmethod
    def _msg(proc, st, f):
        st.check_body(f)
        if "group" in f:
            homes = st.services.homes
            if homes is not None and not homes.here(f["group"]):  # the group's home fans it out
                homes.forward(f["group"], proc.pid, f["ref"], "group_msg", st.user, f)
            else:
                st.services.groups.message(st.user, proc.pid, f)
        else:
            st.services.router.message(st.user, proc.pid, f["ref"], f["id"], f["to"], f["body"], st.device)
        st.awaiting_answer(f["ref"])

    @staticmethod
    def _ack(proc, st, f):
        if st.services.homes is not None and not st.services.homes.here(st.user):
            return st.services.homes.ack(st.user, st.device, proc.pid, f["seq"])
        spool = st.services.offd.current(st.user)
        # While the shard restarts the ack is dropped: the items come again and are acked again.
        if spool is not None and st.services.sm.lookup(st.user, st.device) == proc.pid:
            st.services.router.acked(st.user, st.device, spool, f["seq"])
            Session._push(proc, st)

    @staticmethod
    def _read(proc, st, f):
        if "group" in f and (st.services.homes is None or st.services.homes.here(f["group"])):
            st.services.groups.members_of(st.user, f["group"], f["ref"])
        st.services.router.read(st.user, proc.pid, f["ref"], f["to"], f["ids"], f.get("group"), st.device)
        st.awaiting_answer(f["ref"])

    @staticmethod
    def _history(proc, st, f):
        bundle = f["bundle"]
        size = len(bundle if type(bundle) is bytes else bundle.encode())
        if size > st.limits.max_body:
            raise ProtocolError(Code.BODY_TOO_LARGE, f"bundle of {size} bytes exceeds max_body "
                                f"{st.limits.max_body}", f["ref"])
        st.services.router.history(st.user, st.device, proc.pid, f["ref"], f["device"], f["bundle"])
        st.awaiting_answer(f["ref"])

    @staticmethod
    def _hello(st, f):
        st.hello(f)
        lim = st.limits
        st.send({"type": "hello", "ref": f["ref"], "version": st.version, "server": st.services.server_name,
                 "node_id": st.services.node_id, "max_frame": lim.max_frame, "max_body": lim.max_body,
                 "idle_timeout": lim.idle_timeout})

    @staticmethod
    def _register(proc, st, f):
        user, ref = f["user"], f["ref"]
        protocol.check_account(user, f["password"], st.services.account_rules, ref)
        try:
            with st.services.registration.admit(user, f.get("invite"), ref):  # open, invite or closed
                st.services.accounts.register(user, f["password"], st.addr[0])
        except UserTaken:
            raise ProtocolError(Code.USER_TAKEN, f"{user!r} is taken", ref) from None
        except Refused as exc:
            raise ProtocolError(exc.code, str(exc), ref, exc.retry_after) from None
        except OSError as exc:
            log.error("registration of %s failed: %s", user, exc)
            raise ProtocolError(Code.STORE_FAILED, "could not store the account; retry", ref) from None
        log.info("registered %s from %s", user, st.addr)
        st.send({"type": "ok", "ref": ref, "user": user})

    @staticmethod
    def _link(proc, st, f):
        """A new device presents a link code (docs/PROTOCOL.md, "Devices"): it gets its id and token."""
        user, ref, ip = f["user"], f["ref"], st.addr[0]
        try:
            device, token = st.services.devices.link(user, f["code"], f["name"],
                                                     (("user", user), ("ip", ip), ("prefix", prefix(ip))), ref)
        except Refused as exc:
            raise ProtocolError(exc.code, str(exc), ref, exc.retry_after) from None
        except OSError as exc:
            log.error("linking a device to %s failed: %s", user, exc)
            raise ProtocolError(Code.STORE_FAILED, "could not store the device; retry", ref) from None
        st.send({"type": "linked", "ref": ref, "user": user, "device": device, "token": token})

    @staticmethod
    def _verify(st, user, device, f, ip):
        """The login's credential: the password for the primary device, the token for a companion
        (the password alone is not enough to act as one)."""
        accounts = st.services.accounts
        if device == PRIMARY:
            password = f.get("password")
            return password is not None and st.worth_hashing(password) and accounts.verify(user, password, ip)
        return "token" in f and accounts.verify_device(user, device, f["token"])

    @staticmethod
    def _login(proc, st, f):
        started = time.monotonic()
        user, ref, device = f["user"], f["ref"], f.get("device", PRIMARY)
        sv, ip = st.services, st.addr[0]
        keys = (("user", user), ("ip", ip), ("prefix", prefix(ip)))
        try:
            verified = sv.failed_logins.attempt(keys, lambda: Session._verify(st, user, device, f, ip))
            st.check_login(ref, verified, sv.lifecycle.banned(user) if verified else None)
        except Refused as exc:
            raise ProtocolError(exc.code, str(exc), ref, exc.retry_after) from None
        except ProtocolError as exc:
            log.info("login for %r from %s refused: %s", user, st.addr, exc.code)
            raise
        if sv.homes is not None and not sv.homes.here(user):
            # the user's home holds their queue: it replaces an older session and pushes the items
            spool, queued = None, sv.homes.attach(user, device, proc.pid)
        else:
            spool = sv.offd.spool(user)
        st.logged_in(user, device)
        proc.entity = user
        sv.gate.authenticated(st.addr)
        online = sv.sm.lookup(user) is not None
        old = sv.sm.register(user, st.device, proc.pid)
        if old is not None:
            sv.router.tell(old, ("replaced",))
        elif not online and spool is not None:  # (for a user homed elsewhere, the home says it)
            sv.presence.online(user)
        if spool is not None:
            queued = spool.login(user, device)  # what it was sent and did not ack goes again
        sv.counters["logins"] += 1
        st.send({"type": "ok", "ref": ref, "user": user, "device": device, "queued": queued})
        sv.devices.logged_in(user, device)
        latency.LOGIN.observe(time.monotonic() - started)
        Session._push(proc, st)

    @staticmethod
    def _push(proc, st):
        """Send queued items up to the flow-control window (only the user's current session)."""
        sv = st.services
        if st.user is None or sv.sm.lookup(st.user, st.device) != proc.pid:
            return
        if sv.homes is not None and not sv.homes.here(st.user):
            return  # the user's home pushes (the "items" message)
        spool = sv.offd.current(st.user)
        if spool is not None:  # None: the shard restarts, and pokes when it is back
            st.push(spool)


def _feature(method):
    """A route to a feature's method, found through the session's services at each call (so a
    hot reload of the feature is seen): ``method(services)(user, pid, frame)`` returns an
    immediate answer or None."""
    return lambda proc, st, f: method(st.services)(st.user, proc.pid, f)


#: The frames that log a connection in (c2s.PRE_LOGIN), each handled by Session itself.
ACCOUNT_ROUTES = {"register": Session._register, "link": Session._link, "login": Session._login}

#: What a logged-in session does with each frame type: ``handler(proc, st, frame)``, returning an
#: immediate answer or None; Session's own handlers, or a feature's method (``_feature``).
ROUTES = {
    "msg": Session._msg,
    "ack": Session._ack,
    "read": Session._read,
    "group_create": _feature(lambda s: s.groups.create),
    "group_add": _feature(lambda s: s.groups.add),
    "group_remove": _feature(lambda s: s.groups.remove),
    "group_leave": _feature(lambda s: s.groups.leave),
    "group_admin": _feature(lambda s: s.groups.set_admin),
    "group_rename": _feature(lambda s: s.groups.rename),
    "group_info": _feature(lambda s: s.groups.info),
    "group_list": _feature(lambda s: s.groups.list),
    "presence_sub": _feature(lambda s: s.presence.subscribe),
    "presence_unsub": _feature(lambda s: s.presence.unsubscribe),
    "privacy": _feature(lambda s: s.presence.privacy),
    "typing": _feature(lambda s: s.presence.typing),
    "block": _feature(lambda s: s.blocks.block),
    "unblock": _feature(lambda s: s.blocks.unblock),
    "block_list": _feature(lambda s: s.blocks.list),
    "passwd": _feature(lambda s: s.lifecycle.passwd),
    "delete_account": _feature(lambda s: s.lifecycle.delete_account),
    "invite_create": _feature(lambda s: s.registration.invite_create),
    "history": Session._history,
    "info": _feature(lambda s: s.router.info),
    "link_code": _feature(lambda s: s.devices.link_code),
    "devices": _feature(lambda s: s.devices.list),
    "unlink": _feature(lambda s: s.devices.unlink),
    "push_register": _feature(lambda s: s.push.register),
    "push_unregister": _feature(lambda s: s.push.unregister),
}
