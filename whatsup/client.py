"""A blocking whatsup client for scripts, tests and the ``whatsup`` CLI (docs/PROTOCOL.md).

Plain sockets, no gevent: usable from any Python program. Requests that carry
a ``ref`` wait for their answer; everything else the server pushes meanwhile
(``msg``, ``receipt``, the ``sent`` of pipelined messages) is kept in order for
:meth:`Client.recv`.

Delivered items are deduplicated by ``seq`` (the server may deliver an item
again after a crash if the device's ack was not yet durable) and acked in
batches: with ``auto_ack``, handing out the last item of a received burst acks
the whole burst with one cumulative ``ack``.
"""
import collections
import itertools
import json
import os
import socket
import ssl
import time
import uuid

from . import protocol
from .address import split as split_address
from .protocol import FrameDecoder, ProtocolError

DEFAULT_SERVER = "127.0.0.1:7222"
PUSHED = ("msg", "receipt", "group_event")  # the spooled kinds: they carry seq and are acked


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


def parse_server(text):
    return split_address(text or DEFAULT_SERVER)


def _address(to, group):
    """A frame goes to one user or to one group, never both."""
    return {"group": group} if group is not None else {"to": to}


class Client:
    def __init__(self, server=DEFAULT_SERVER, timeout=30.0, tls=False, cafile=None, last_seq=0, seen=None,
                 auto_ack=True, max_frame=1 << 24):
        self.host, self.port = parse_server(server) if isinstance(server, str) else server
        self.timeout = timeout
        self.auto_ack = auto_ack
        self.last_seq = last_seq  # highest delivered seq handed to the application
        self.seen = seen if seen is not None else Seen()
        self.acked_seq = last_seq
        self.user = None
        self.hello = self.last_login = None
        self.inbox = collections.deque()
        self._refs = itertools.count(1)
        self._decoder = FrameDecoder(max_frame)
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
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
            data = self.sock.recv(1 << 20)
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
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, f in enumerate(self.inbox):
                if f.get("ref") == ref:
                    del self.inbox[i]
                    if f.get("type") == "error":
                        raise ServerError(f)
                    return f
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {frame['type']} (ref {ref})")
            self._read_frames(left)

    # --- account ------------------------------------------------------------------

    def register(self, user, password, invite=None):
        frame = {"type": "register", "user": user, "password": password}
        if invite is not None:
            frame["invite"] = invite
        return self.request(frame)

    def login(self, user, password):
        self.last_login = self.request({"type": "login", "user": user, "password": password})
        self.user = user
        return self.last_login

    def passwd(self, old, new):
        """Change the password (docs/PROTOCOL.md, "Accounts"); other sessions are logged out."""
        return self.request({"type": "passwd", "old": old, "new": new})

    def delete_account(self, password):
        """Delete the account; the server answers ok, then closes with account_deleted."""
        return self.request({"type": "delete_account", "password": password})

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

    @staticmethod
    def message_frame(to, body, id=None, group=None):
        return {"type": "msg", "id": id or uuid.uuid4().hex, "body": body, **_address(to, group)}

    def read(self, to, ids, group=None):
        """Tell ``to`` that its messages ``ids`` (in ``group``, if given) were read (waits until
        the server has it)."""
        frame = {"type": "read", "to": to, "ids": list(ids)}
        if group is not None:
            frame["group"] = group
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
        (group, from, id) is in ``seen``) is acked again and skipped.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self.inbox:
                frame = self.inbox.popleft()
                if frame.get("type") in PUSHED:
                    seq = frame.get("seq", 0)
                    if seq <= self.last_seq:
                        self.acked_seq = min(self.acked_seq, seq - 1)  # ack it again
                        continue
                    self.last_seq = seq
                    if not self.inbox:
                        self.flush_acks()  # the last of a burst: one ack covers all of it
                    if frame["type"] == "msg" and not self.seen.add(message_key(frame)):
                        continue  # shown before under another seq: acked, not shown again
                return frame
            self.flush_acks()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._read_frames(left)

    def drain(self, idle=0.5):
        """Everything pushed until nothing more arrives for ``idle`` seconds."""
        out = []
        while True:
            frame = self.recv(idle)
            if frame is None:
                return out
            out.append(frame)


class ClientState:
    """What a device keeps between CLI runs for one user of one data dir: the last
    delivered seq and the keys of the messages it has shown."""
    KEEP = 2000

    def __init__(self, node_id, user, directory=None):
        base = directory or os.environ.get("XDG_STATE_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "state")
        self.path = os.path.join(base, "whatsup", f"{user}@{node_id}.json")

    def load(self, client):
        """Give ``client`` the saved last seq and seen keys."""
        try:
            with open(self.path) as f:
                saved = json.load(f)
            client.last_seq = client.acked_seq = int(saved.get("last_seq", 0))
            client.seen = Seen(saved.get("seen", []))
        except (OSError, ValueError, TypeError):
            pass

    def save(self, client):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"last_seq": client.last_seq, "seen": list(client.seen)[-self.KEEP:]}, f)
        os.replace(tmp, self.path)
