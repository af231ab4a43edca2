"""A blocking whatsup client for scripts, tests and the ``whatsup`` CLI (docs/PROTOCOL.md).

Plain sockets, no gevent: usable from any Python program. Requests that carry
a ``ref`` wait for their answer; everything else the server pushes meanwhile
(``msg``, ``receipt``, the ``sent`` of pipelined messages) is kept in order for
:meth:`Client.recv`.

Delivered items are deduplicated by ``seq`` (the server may deliver an item
again after a crash if the device's ack was not yet durable) and acked in
batches: with ``auto_ack``, handing out the last item of a received burst acks
the whole burst with one cumulative ``ack``.

:class:`Connection` is a logged-in client that survives disconnects: it
reconnects with backoff and jitter, and its :class:`Outbox` keeps every message
and read receipt until the server answered it, sending them again with the same
ids after a reconnect (the server's dedup makes that exactly once).
"""
import collections
import itertools
import json
import os
import random
import socket
import ssl
import time
import uuid

from . import protocol
from .address import split as split_address
from .protocol import FrameDecoder, ProtocolError

DEFAULT_SERVER = "127.0.0.1:7222"
PUSHED = ("msg", "receipt", "group_event", "history")  # the spooled kinds: they carry seq and are acked


class Seen:
    """The (group, from, id) keys of the last ``size`` messages handed to the application.

    Kept across connections like ``last_seq``: a message erased by a crash before
    its fsync, after the device had it, comes again under a new seq when its
    sender retransmits it (docs/PROTOCOL.md, "Exactly once on screen").
    """

    def __init__(self, keys=(), size=10000):
        self.size = size
        self._keys = collections.OrderedDict((tuple(k), None) for k in keys)

    def __repr__(self):
        return f"<Seen {len(self._keys)}/{self.size}>"

    def __len__(self):
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def add(self, key):
        """Remember ``key``; False when it was already there."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


def message_key(frame):
    return frame.get("group"), frame.get("from"), frame.get("id")


class ServerError(Exception):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, frame):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.code, self.message, self.frame = frame.get("code"), frame.get("message"), frame


class Closed(ConnectionError):
    """The server closed the connection (``error`` holds its last error frame, if any)."""

    def __init__(self, message, error=None):
        super().__init__(message)
        self.error = error


class LoggedInElsewhere(Closed):
    """The same user logged in on another connection (``replaced``): reconnecting would only
    take the session back from that device, so a :class:`Connection` stops instead."""


class BodyTooLarge(ValueError):
    """A message body over the server's ``max_body``, refused before it is sent."""


def parse_server(text):
    return split_address(text or DEFAULT_SERVER)


def _address(to, group):
    """A frame goes to one user or to one group, never both."""
    return {"group": group} if group is not None else {"to": to}


class Client:
    def __init__(self, server=DEFAULT_SERVER, timeout=30.0, tls=False, cafile=None, last_seq=0, seen=None,
                 auto_ack=True, max_frame=1 << 24, source=None):
        self.host, self.port = parse_server(server) if isinstance(server, str) else server
        self.timeout = timeout
        self.auto_ack = auto_ack
        self.last_seq = last_seq  # highest delivered seq handed to the application
        self.seen = seen if seen is not None else Seen()
        self.acked_seq = last_seq
        self.user = self.device = None
        self.hello = self.last_login = None
        self.inbox = collections.deque()
        self.items = 0  # spooled items received, the ones skipped below included (login's queued counts them)
        self._refs = itertools.count(1)
        self._decoder = FrameDecoder(max_frame)
        # read into this and keep an exact-size copy: recv(n) mallocs n bytes and shrinks them to
        # what came, and anything kept from that read (a long body) pins the rest of the heap chunk
        self._inbox = memoryview(bytearray(1 << 16))
        sock = socket.create_connection((self.host, self.port), timeout=timeout,  # source: a local
                                        source_address=(source, 0) if source else None)  # address
        if tls:
            ctx = ssl.create_default_context(cafile=cafile)
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.hello = self.request({"type": "hello", "versions": list(protocol.VERSIONS),
                                   "client": "whatsup.client"})

    def __repr__(self):
        return f"<Client {self.user or '-'} {self.host}:{self.port} last_seq={self.last_seq} inbox={len(self.inbox)}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.flush_acks()
        except OSError:
            pass
        self.sock.close()

    # --- frames -----------------------------------------------------------------

    def send_frame(self, frame):
        self.sock.sendall(protocol.encode(frame))

    def _read_frames(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self._inbox[:self.sock.recv_into(self._inbox)].tobytes()
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        if not data:
            last = next((f for f in reversed(self.inbox) if f.get("type") == "error"), None)
            raise Closed("connection closed by the server", last)
        for frame in self._decoder.feed(data):
            if isinstance(frame, ProtocolError):
                raise frame
            self.inbox.append(frame)
        return True

    def request(self, frame, timeout=None):
        """Send a request with a fresh ``ref`` and wait for the answer to it."""
        ref = frame["ref"] = next(self._refs)
        self.send_frame(frame)
        f = self._take(lambda f: f.get("ref") == ref, timeout or self.timeout)
        if f is None:
            raise TimeoutError(f"no answer to {frame['type']} (ref {ref})")
        if f.get("type") == "error":
            raise ServerError(f)
        return f

    def _take(self, wanted, timeout):
        """The first received frame that ``wanted`` accepts, out of the inbox (the others stay
        there, in order); None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, f in enumerate(self.inbox):
                if wanted(f):
                    del self.inbox[i]
                    return f
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read_frames(left)

    # --- account ------------------------------------------------------------------

    def register(self, user, password, invite=None):
        frame = {"type": "register", "user": user, "password": password}
        if invite is not None:
            frame["invite"] = invite
        return self._auth(frame)

    def login(self, user, password=None, device=None, token=None):
        """Log in as the primary device (the password) or as companion ``device`` (its token)."""
        frame = {"type": "login", "user": user}
        frame.update({k: v for k, v in (("password", password), ("device", device), ("token", token))
                      if v is not None})
        self.last_login = self._auth(frame)
        self.user, self.device = user, self.last_login.get("device", protocol.PRIMARY)
        return self.last_login

    # --- devices (docs/PROTOCOL.md, "Devices") ------------------------------------------

    def link_code(self):
        """A one-time code (on a logged-in device) with which a new device links to this user."""
        return self.request({"type": "link_code"})["code"]

    def link(self, user, code, name):
        """On the new device, before login: (device id, token) to log in with from then on."""
        f = self.request({"type": "link", "user": user, "code": code, "name": name})
        return f["device"], f["token"]

    def devices(self):
        return self.request({"type": "devices"})["devices"]

    def info(self, to, id):
        """Message info: which of ``to``'s devices have message ``id`` (✓✓ came with the first)."""
        return self.request({"type": "info", "to": to, "id": id})["devices"]

    def send_history(self, device, bundle):
        """Send ``device`` of this user an opaque history bundle (bytes or str, up to max_body)."""
        return self.request({"type": "history", "device": device, "bundle": bundle})

    def unlink(self, device):
        return self.request({"type": "unlink", "device": device})

    def passwd(self, old, new):
        """Change the password (docs/PROTOCOL.md, "Accounts"); other sessions are logged out."""
        return self.request({"type": "passwd", "old": old, "new": new})

    def delete_account(self, password):
        """Delete the account; the server answers ok, then closes with account_deleted."""
        return self.request({"type": "delete_account", "password": password})

    def _auth(self, frame):
        """A login or registration, sent again after ``retry_after`` while the server answers
        ``busy`` (its hashing capacity is taken), within this client's timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self.request(dict(frame))
            except ServerError as exc:
                wait = exc.frame.get("retry_after", 0.5)
                if exc.code != "busy" or time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    # --- messages ---------------------------------------------------------------------

    def send(self, to, body, id=None, group=None):
        """Send a message (to a user, or to ``group`` with ``to=None``) and wait for its ✓
        (the ``sent`` frame, with ``id`` and ``ts``)."""
        return self.request(self.message_frame(to, body, id, group))

    def send_nowait(self, to, body, id=None, group=None):
        """Send a message without waiting; its ``sent`` arrives through :meth:`recv`."""
        frame = self.message_frame(to, body, id, group)
        frame["ref"] = next(self._refs)
        self.send_frame(frame)
        return frame

    def message_frame(self, to, body, id=None, group=None):
        """A msg frame. A group message's id is marked seen: the copy the group sends back to a
        user with other devices (docs/PROTOCOL.md, "Devices") is shown on those, not on this one."""
        check_body(body, self.hello)
        frame = {"type": "msg", "id": id or uuid.uuid4().hex, "body": body, **_address(to, group)}
        if group is not None:
            self.seen.add(message_key({"from": self.user, **frame}))
        return frame

    def read(self, to, ids, group=None):
        """Tell ``to`` that its messages ``ids`` (in ``group``, if given) were read (waits until
        the server has it). The acks of what was handed out go first: the server accepts a read
        only for messages the device acked (``not_delivered``)."""
        frame = {"type": "read", "to": to, "ids": list(ids)}
        if group is not None:
            frame["group"] = group
        self.flush_acks()
        return self.request(frame)

    # --- groups (docs/PROTOCOL.md, "Groups") ----------------------------------------------

    def group_create(self, name, members=()):
        """Create a group (you are its admin); returns its id."""
        return self.request({"type": "group_create", "name": name, "members": list(members)})["group"]

    def group_add(self, group, members):
        return self.request({"type": "group_add", "group": group, "members": list(members)})

    def group_remove(self, group, members):
        return self.request({"type": "group_remove", "group": group, "members": list(members)})

    def group_leave(self, group):
        return self.request({"type": "group_leave", "group": group})

    def group_admin(self, group, user, admin=True):
        return self.request({"type": "group_admin", "group": group, "user": user, "admin": admin})

    def group_rename(self, group, name):
        return self.request({"type": "group_rename", "group": group, "name": name})

    def group_info(self, group):
        return self.request({"type": "group_info", "group": group})

    def group_list(self):
        return self.request({"type": "group_list"})["groups"]

    # --- presence, typing, blocking ------------------------------------------------------

    def subscribe(self, user):
        """Follow ``user``'s presence; returns the current ``presence`` frame (updates come
        through :meth:`recv`). Subscriptions end with the connection."""
        return self.request({"type": "presence_sub", "user": user})

    def unsubscribe(self, user):
        return self.request({"type": "presence_unsub", "user": user})

    def privacy(self, last_seen):
        """Who sees your last seen: ``"everyone"`` or ``"nobody"``."""
        return self.request({"type": "privacy", "last_seen": last_seen})

    def typing(self, to=None, group=None, state="typing"):
        """Fire-and-forget typing indicator (``typing``, ``recording`` or ``paused``)."""
        self.send_frame({"type": "typing", "state": state, **_address(to, group)})

    def block(self, user):
        return self.request({"type": "block", "user": user})

    def unblock(self, user):
        return self.request({"type": "unblock", "user": user})

    def blocked(self):
        return self.request({"type": "block_list"})["users"]

    def ping(self):
        return self.request({"type": "ping"})

    def ack(self, seq):
        self.send_frame({"type": "ack", "seq": seq})
        self.acked_seq = max(self.acked_seq, seq)

    def flush_acks(self):
        if self.auto_ack and self.last_seq > self.acked_seq:
            self.ack(self.last_seq)

    def recv(self, timeout=None):
        """The next pushed frame (msg, receipt, sent, error...), or None after ``timeout``.

        An item already handed out before (seq <= last_seq, or a message whose
        (group, from, id) is in ``seen``) is acked again and skipped, and so is this
        device's own copy of what it sent (``device`` is its own: its other devices show it).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self.inbox:
                frame = self.inbox.popleft()
                if frame.get("type") in PUSHED:
                    self.items += 1
                    seq = frame.get("seq", 0)
                    if seq <= self.last_seq:
                        self.acked_seq = min(self.acked_seq, seq - 1)  # ack it again
                        continue
                    self.last_seq = seq
                    if not self.inbox:
                        self.flush_acks()  # the last of a burst: one ack covers all of it
                    if frame["type"] == "msg" and not self.seen.add(message_key(frame)):
                        continue  # shown before under another seq: acked, not shown again
                    if frame.get("device") == self.device and frame.get("from") == self.user:
                        continue  # this device's own message or read, synced to its others
                return frame
            self.flush_acks()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read_frames(left)

    def notice(self, timeout):
        """The next frame that is not an item (presence, typing...), or None after ``timeout``.
        Items stay where they are, unacked, for :meth:`recv` or the device's next login: a
        command that only watches must not take them from the user's inbox."""
        return self._take(lambda f: f.get("type") not in PUSHED, timeout)

    def drain(self, idle=0.5):
        """Everything pushed until nothing more arrives for ``idle`` seconds."""
        out = []
        while True:
            frame = self.recv(idle)
            if frame is None:
                return out
            out.append(frame)


def check_body(body, hello):
    """Refuse a body the server announced (``hello``'s ``max_body``) it would refuse."""
    limit = (hello or {}).get("max_body")
    size = len(body.encode())
    if limit is not None and size > limit:
        raise BodyTooLarge(f"message of {size} bytes is over the server's limit of {limit} bytes (max_body)")


class Backoff:
    """Delays between reconnection attempts: doubling from ``first`` up to ``cap`` seconds, each
    drawn at random between half and all of that ("equal jitter"), so the devices a server
    restart disconnected together do not come back together. I/O-free: ``random`` is a
    parameter."""

    def __init__(self, first=0.5, cap=30.0, random=random.random):
        self.first, self.cap, self.random = first, cap, random
        self.failures = 0

    def __repr__(self):
        return f"<Backoff failures={self.failures} first={self.first} cap={self.cap}>"

    def next(self):
        """The delay before the next attempt (and one more failure counted)."""
        ceiling = min(self.cap, self.first * 2 ** min(self.failures, 32))
        self.failures += 1
        return ceiling / 2 + self.random() * ceiling / 2

    def reset(self):
        self.failures = 0


#: Answers after which a request is sent again later instead of given up (docs/PROTOCOL.md).
RETRY = frozenset({"rate_limited", "store_failed", "queue_full", "busy", "internal"})


class Outbox:
    """Requests (``msg``, ``read``) kept until the server answers them, across connections.

    I/O-free. Each entry has a key (a message's id) and a frame without ``ref``;
    :meth:`unsent` gives the entries not in flight on the current connection,
    :meth:`assign` records the ``ref`` one went out with, :meth:`answer` matches
    an answer to its entry and says whether it is done with. After a reconnect
    (:meth:`reset`) every entry goes out again, with its same id.
    """

    def __init__(self):
        self.frames = collections.OrderedDict()  # key -> frame, in the order they were added
        self.refs = {}                            # ref on this connection -> key

    def __repr__(self):
        return f"<Outbox {len(self.frames)} waiting, {len(self.refs)} in flight>"

    def __len__(self):
        return len(self.frames)

    def __contains__(self, key):
        return key in self.frames

    def add(self, key, frame):
        self.frames[key] = frame

    def unsent(self):
        flying = set(self.refs.values())
        return [(key, frame) for key, frame in self.frames.items() if key not in flying]

    def assign(self, ref, key):
        self.refs[ref] = key

    def reset(self):
        self.refs.clear()

    def answer(self, frame):
        """The key of the entry ``frame`` answers (None: not one of ours). The entry is done
        with unless the answer is an error worth retrying (RETRY): then it goes out again."""
        key = self.refs.pop(frame.get("ref"), None) if "ref" in frame else None
        if key is not None and not (frame.get("type") == "error" and frame.get("code") in RETRY):
            self.frames.pop(key, None)
        return key


class Connection:
    """A logged-in client that reconnects by itself: for ``whatsup chat`` and for scripts.

    :meth:`send` and :meth:`read` never fail for want of a connection: they go
    to the :class:`Outbox` and out as soon as there is one. :meth:`recv` hands
    out what the server pushes (and the ``sent`` of each message, the ✓), pings
    when the line is quiet, and after any disconnect reconnects with
    :class:`Backoff`, logs in, follows the same presences again and sends the
    outbox again. It tells ``on_status(event, detail)`` about ``"disconnected"``
    (detail: why, and the delay) and ``"connected"``. A ``replaced`` session
    raises :class:`LoggedInElsewhere`; wrong credentials raise :class:`ServerError`.
    Not thread-safe: one thread uses it.
    """

    def __init__(self, server, user, password, tls=False, cafile=None, state_dir=None, backoff=None, device=None,
                 on_status=None, timeout=10.0, clock=time.monotonic, sleep=time.sleep):
        self.server, self.user, self.password = server, user, password
        self.device = device  # None: the companion linked in state_dir, if any, else the primary
        self.tls, self.cafile, self.state_dir = tls, cafile, state_dir
        self.backoff = backoff or Backoff()
        self.on_status = on_status or (lambda event, detail: None)
        self.timeout, self.clock, self.sleep = timeout, clock, sleep
        self.client = self.hello = self.state = None
        self.outbox = Outbox()
        self.following = set()     # users whose presence we follow, again after each reconnect
        self.pending = collections.deque()  # frames to hand out before reading more
        self.next_attempt = self.next_retry = self.sent_at = 0.0
        self.last_seq, self.seen = 0, Seen()  # what the device has shown, across connections

    def __repr__(self):
        return f"<Connection {self.user}@{self.server} {'up' if self.client else 'down'} {self.outbox!r}>"

    @property
    def connected(self):
        return self.client is not None

    def connect(self):
        """One attempt now; True when logged in. Wrong credentials raise ServerError."""
        self.next_attempt = 0.0
        return self._attempt()

    def close(self):
        if self.client is not None:
            try:
                self.client.flush_acks()
            except OSError:
                pass
            self._drop()

    # --- what the application does ---------------------------------------------------

    def send(self, to, body, group=None, id=None):
        """Queue a message (to a user, or to ``group``) and send it if connected; returns its id.
        Raises BodyTooLarge at once for a body over the server's max_body."""
        check_body(body, self.hello)
        frame = {"type": "msg", "id": id or uuid.uuid4().hex, "body": body, **_address(to, group)}
        self._queue(frame)
        return frame["id"]

    def read(self, to, ids, group=None):
        """Queue a read receipt for ``to``'s messages ``ids``; it goes out like a message."""
        self._queue({"type": "read", "to": to, "ids": list(ids), **({"group": group} if group else {})})

    def typing(self, to=None, group=None, state="typing"):
        """A typing indicator, now or never (it is transient: not worth an outbox)."""
        self._write({"type": "typing", "state": state, **_address(to, group)})

    def follow(self, user):
        """Follow ``user``'s presence, now and after every reconnect (their state comes through
        recv as a ``presence`` frame)."""
        self.following.add(user)
        if self.client is not None:
            self._subscribe(user)

    def request(self, frame):
        """A request answered at once (group_info...), on the current connection; raises Closed
        when there is none."""
        if self.client is None:
            raise Closed("not connected")
        try:
            return self.client.request(frame)
        except (OSError, ProtocolError) as exc:
            self._lost(exc)
            raise Closed(f"connection lost: {exc}") from None

    def recv(self, timeout):
        """The next frame for the application, or None after ``timeout`` seconds. Answers to the
        outbox's reads are kept, errors that will be retried too; a message's ``sent`` is handed
        out, and so is an error that gave one up (its ``ref`` matched: see ``id``)."""
        deadline = self.clock() + timeout
        while True:
            if self.pending:
                return self.pending.popleft()
            now = self.clock()
            if self.client is None:
                if now >= self.next_attempt and self._attempt():
                    continue
                wait = min(deadline, self.next_attempt) - now
                if now >= deadline:
                    return None
                self.sleep(max(0.0, min(wait, deadline - now)))
                continue
            if now >= self.next_retry:
                self._flush()
            quiet = float(self.hello.get("idle_timeout", 90)) / 3
            if now - self.sent_at >= quiet:
                self._write({"type": "ping"})
            try:
                frame = self.client.recv(max(0.0, min(deadline - now, quiet)))
            except (OSError, ProtocolError) as exc:  # Closed is an OSError
                self._lost(exc)
                continue
            if frame is None:
                if self.clock() >= deadline:
                    return None
                continue
            frame = self._sort(frame)
            if frame is not None:
                if frame.get("type") in PUSHED or frame.get("type") == "sent":
                    self._save()
                return frame

    # --- internals ------------------------------------------------------------------------

    def _sort(self, frame):
        """What the application sees of one received frame (None: nothing)."""
        key = self.outbox.answer(frame)
        kind = frame.get("type")
        if key is not None:
            if kind == "error":
                if frame.get("code") in RETRY:  # it goes out again after a while
                    self.next_retry = self.clock() + frame.get("retry_after", self.backoff.first)
                    return None
                return {**frame, "id": key} if isinstance(key, str) else None
            return frame if kind == "sent" else None
        if kind == "error" and frame.get("code") == "replaced":
            self._drop()
            raise LoggedInElsewhere("logged in elsewhere", frame)
        if kind == "pong":
            return None
        return frame

    def _attempt(self):
        try:
            client = Client(self.server, timeout=self.timeout, tls=self.tls, cafile=self.cafile)
        except (OSError, ProtocolError) as exc:
            return self._retry_later(exc)
        try:
            credential = self._resume(client)
            if credential is not None:
                client.login(self.user, device=credential[0], token=credential[1])
            else:
                client.login(self.user, self.password)
        except ServerError as exc:
            client.close()
            if exc.code in RETRY or exc.code == "too_many_attempts":
                return self._retry_later(exc)
            raise
        except (OSError, ProtocolError) as exc:
            client.sock.close()
            return self._retry_later(exc)
        self.client, self.hello = client, client.hello
        self.backoff.reset()
        self.outbox.reset()
        self.sent_at = self.clock()
        self.on_status("connected", f"{self.server} as {self.user}")
        for user in sorted(self.following):
            self._subscribe(user)
        self._flush()
        return self.client is not None

    def _resume(self, client):
        """Carry the device's last seq and seen messages over to a new connection to the same
        data dir; for another (or the first), the ones saved for it, if any. Returns the
        companion credential (device, token) to log in with, None for the primary."""
        node = client.hello.get("node_id")
        credential = None
        if self.state_dir is not None and self.device != protocol.PRIMARY:
            credential = ClientState(node, self.user, self.state_dir).credential()
            if credential is not None and self.device not in (None, credential[0]):
                credential = None
        if self.hello is not None and self.hello.get("node_id") == node:
            client.last_seq = client.acked_seq = self.last_seq
            client.seen = self.seen
        elif self.state_dir is not None:
            device = credential[0] if credential else protocol.PRIMARY
            self.state = ClientState(node, self.user, self.state_dir, device=device)
            for frame in self.state.load(client):  # what an earlier run could not send
                self.outbox.add(_outbox_key(frame), frame)
        return credential

    def _retry_later(self, exc):
        delay = self.backoff.next()
        self.next_attempt = self.clock() + delay
        self.on_status("disconnected", f"{_why(exc)}; trying again in {delay:.1f} s")
        return False

    def _drop(self):
        """Close the connection, keeping what the device knows (last seq, seen messages)."""
        client, self.client = self.client, None
        self.last_seq, self.seen = client.last_seq, client.seen
        self._save(client)
        client.sock.close()

    def _lost(self, exc):
        """The connection broke: reconnect later (not after a ``replaced``)."""
        self._drop()
        error = getattr(exc, "error", None)
        if error is not None and error.get("code") == "replaced":
            raise LoggedInElsewhere("logged in elsewhere", error)
        self._retry_later(exc)

    def _queue(self, frame):
        """A request for the outbox: kept (on disk too, once the data dir is known), sent if we can."""
        self.outbox.add(_outbox_key(frame), frame)
        self._save()
        self._flush()

    def _flush(self):
        """Send whatever the outbox holds that is not in flight on this connection, after the
        acks of what was handed out (a read is refused for a message not acked yet)."""
        if self.client is None:
            return
        try:
            self.client.flush_acks()
        except OSError as exc:
            return self._lost(exc)
        for key, frame in self.outbox.unsent():
            ref = next(self.client._refs)
            if not self._write({**frame, "ref": ref}):
                return
            self.outbox.assign(ref, key)

    def _write(self, frame):
        if self.client is None:
            return False
        try:
            self.client.send_frame(frame)
        except OSError as exc:
            self._lost(exc)
            return False
        self.sent_at = self.clock()
        return True

    def _subscribe(self, user):
        try:
            self.pending.append(self.client.request({"type": "presence_sub", "user": user}))
        except ServerError as exc:
            self.following.discard(user)
            self.pending.append({**exc.frame, "user": user})
        except (OSError, ProtocolError) as exc:
            self._lost(exc)

    def _save(self, client=None):
        """Keep the device's state where the next run finds it: last seq and seen from the live
        client, or as the last one left them (``_drop``), and the outbox."""
        if self.state is not None:
            try:
                self.state.save(client or self.client or self, self.outbox.frames.values())
            except OSError:
                pass  # the device then shows again, once, what it got after its last save


def _outbox_key(frame):
    """A message is known by its id; a read receipt by what it says."""
    if frame["type"] == "msg":
        return frame["id"]
    return ("read", frame["to"], frame.get("group"), tuple(frame["ids"]))


def _why(exc):
    error = getattr(exc, "error", None)
    if error is not None:
        return f"{error.get('code')}: {error.get('message')}"
    if isinstance(exc, ServerError):
        return f"{exc.code}: {exc.message}"
    return str(exc) or type(exc).__name__


class ClientState:
    """What a device keeps between CLI runs for one user of one data dir: the last
    delivered seq, the keys of the messages it has shown, the requests of its
    outbox that had no answer yet (sent again, same ids, by the next run), and its
    message history (what it can give a new device, docs/PROTOCOL.md "Devices")."""
    KEEP = 2000
    FIELDS = ("ts", "from", "to", "group", "id", "body")  # of a message in the history

    def __init__(self, node_id, user, directory=None, device=protocol.PRIMARY):
        directory = directory or self.default_dir()
        device_part = f".{device}" if device != protocol.PRIMARY else ""  # the primary's keeps its old name
        self.path = os.path.join(directory, f"{user}{device_part}@{node_id}.json")
        self.credential_path = os.path.join(directory, f"{user}@{node_id}.device.json")
        self.history = []  # messages shown or sent, oldest first (dicts of FIELDS)

    @staticmethod
    def default_dir():
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        return os.path.join(base, "whatsup")

    def load(self, client):
        """Give ``client`` the saved last seq and seen keys; returns the saved outbox frames."""
        try:
            with open(self.path) as f:
                saved = json.load(f)
            client.last_seq = client.acked_seq = int(saved.get("last_seq", 0))
            client.seen = Seen(saved.get("seen", []))
            self.history = [m for m in saved.get("history", []) if isinstance(m, dict)]
            return [f for f in saved.get("outbox", []) if isinstance(f, dict) and f.get("type") in ("msg", "read")]
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    def remember(self, message):
        """Add a message (a msg frame, or one this device sent) to the history."""
        self.history.append({k: message[k] for k in self.FIELDS if k in message})

    def bundles(self, size):
        """The history as bundles of at most ``size`` bytes each (JSON arrays of messages)."""
        out, part = [], []
        for message in self.history[-self.KEEP:]:
            if part and len(json.dumps(part + [message]).encode()) > size:
                out.append(json.dumps(part).encode())
                part = []
            part.append(message)
        return out + ([json.dumps(part).encode()] if part else [])

    def merge(self, bundle):
        """Take a history bundle from another device; returns how many messages it held."""
        try:
            messages = [m for m in json.loads(bundle) if isinstance(m, dict)]
        except (ValueError, TypeError):
            return 0
        known = {(m.get("from"), m.get("id")) for m in self.history}
        self.history = sorted(self.history + [m for m in messages if (m.get("from"), m.get("id")) not in known],
                              key=lambda m: m.get("ts", 0))
        return len(messages)

    def credential(self):
        """(device id, token) of the companion linked here for this user and server, or None."""
        try:
            with open(self.credential_path) as f:
                saved = json.load(f)
            return int(saved["device"]), str(saved["token"])
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def forget_credential(self):
        """The companion linked here was unlinked: its token is worth nothing, drop it."""
        try:
            os.unlink(self.credential_path)
        except FileNotFoundError:
            pass

    def save_credential(self, device, token):
        """Keep a newly linked device's id and token (0600: the token is its credential)."""
        os.makedirs(os.path.dirname(self.credential_path), exist_ok=True)
        tmp = self.credential_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"device": device, "token": token}, f)
        os.replace(tmp, self.credential_path)

    def save(self, client, outbox=()):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"last_seq": client.last_seq, "seen": list(client.seen)[-self.KEEP:],
                       "outbox": list(outbox), "history": self.history[-self.KEEP:]}, f)
        os.replace(tmp, self.path)
