"""The wire protocol: frames <-> dicts, frame schemas and error codes.

Implements docs/PROTOCOL.md ("Framing", "Frames", "Errors"). No sockets here: the
session feeds received bytes to a :class:`FrameDecoder` and sends what
:func:`encode` returns, so every rule of the protocol can be tested without I/O.
"""
import re
import reprlib
import struct

import msgpack

VERSIONS = (1,)
PRIMARY = 0  # the device that registered the account (docs/PROTOCOL.md, "Devices")
HEADER = struct.Struct(">I")
NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
MAX_ID = 64
MAX_IDS = 1024
#: Containers nested deeper than this in a frame are refused with ``too_deep`` (a valid frame
#: nests 2: a map holding arrays of strings). msgpack itself stops at 1024, but a frame nested
#: ~1,000 deep made formatting its error recurse past Python's limit (issue 11).
MAX_DEPTH = 8


class Code:
    """Stable error codes (docs/PROTOCOL.md, "Errors"). Never renumber or rename."""
    BAD_FRAME = "bad_frame"                  # zero length: framing corrupt, connection closed
    FRAME_TOO_LARGE = "frame_too_large"      # length over max_frame: connection closed
    BAD_MSGPACK = "bad_msgpack"
    TOO_DEEP = "too_deep"                    # containers nested deeper than MAX_DEPTH
    NOT_A_MAP = "not_a_map"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"
    UNSUPPORTED_VERSION = "unsupported_version"   # connection closed
    HELLO_REQUIRED = "hello_required"
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    AUTH_FAILED = "auth_failed"
    USER_TAKEN = "user_taken"
    BAD_USERNAME = "bad_username"
    BAD_PASSWORD = "bad_password"
    UNKNOWN_USER = "unknown_user"
    EMPTY_BODY = "empty_body"
    BODY_TOO_LARGE = "body_too_large"
    QUEUE_FULL = "queue_full"
    STORE_FAILED = "store_failed"
    REPLACED = "replaced"                    # connection closed
    IDLE_TIMEOUT = "idle_timeout"            # connection closed
    SHUTTING_DOWN = "shutting_down"          # connection closed
    INTERNAL = "internal"
    # groups, presence and typing, blocking (docs/PROTOCOL.md, at the end)
    UNKNOWN_GROUP = "unknown_group"
    NOT_MEMBER = "not_member"
    NOT_ADMIN = "not_admin"
    GROUP_FULL = "group_full"
    IS_SELF = "is_self"
    BLOCKED = "blocked"
    # Limits (docs/PROTOCOL.md, "Limits")
    RATE_LIMITED = "rate_limited"            # frame refused: over its [ratelimit] rate; retry later
    FLOODING = "flooding"                    # connection closed: rate_limited too often
    TOO_MANY_ATTEMPTS = "too_many_attempts"  # login refused unchecked: too many failures lately
    SLOW_READER = "slow_reader"              # connection closed: the device does not read
    TOO_MANY_CONNECTIONS = "too_many_connections"  # connection closed at accept: per-address cap
    OVERLOADED = "overloaded"                # connection closed: the session's mailbox is full
    NOT_DELIVERED = "not_delivered"          # read names a message not delivered to the reader
    BUSY = "busy"                            # login/register refused unchecked: no hashing capacity now
    # accounts (docs/PROTOCOL.md, "Accounts")
    REGISTRATION_CLOSED = "registration_closed"  # register refused: only the operator registers
    INVITE_REQUIRED = "invite_required"      # register refused: this server needs an invite
    BAD_INVITE = "bad_invite"                # register refused: unknown, used up or expired invite
    INVITE_LIMIT = "invite_limit"            # invite_create refused: the user holds accounts.user_invites
    BANNED = "banned"                        # login refused, or the live session closed: banned
    KICKED = "kicked"                        # connection closed by the operator
    PASSWORD_CHANGED = "password_changed"    # connection closed: the password changed elsewhere
    ACCOUNT_DELETED = "account_deleted"      # connection closed: the account was deleted
    # devices (docs/PROTOCOL.md, "Devices")
    BAD_LINK_CODE = "bad_link_code"          # link refused: unknown, used or expired code
    DEVICE_LIMIT = "device_limit"            # link refused: the user has devices.max_companions companions
    UNKNOWN_DEVICE = "unknown_device"        # unlink names no linked device
    PRIMARY_DEVICE = "primary_device"        # unlink refused: the primary device is the account
    UNLINKED = "unlinked"                    # connection closed: this device was unlinked
    UNKNOWN_MESSAGE = "unknown_message"      # info names no recent message of yours to that user


#: Codes after which the server closes the connection.
CLOSING = frozenset({Code.BAD_FRAME, Code.FRAME_TOO_LARGE, Code.UNSUPPORTED_VERSION,
                     Code.REPLACED, Code.IDLE_TIMEOUT, Code.SHUTTING_DOWN, Code.FLOODING,
                     Code.SLOW_READER, Code.TOO_MANY_CONNECTIONS, Code.OVERLOADED, Code.KICKED,
                     Code.PASSWORD_CHANGED, Code.ACCOUNT_DELETED, Code.UNLINKED})


#: Codes of frames that are garbage, whatever the session's state: each costs a strike, like a
#: rate_limited refusal, so a connection that keeps sending them is closed with flooding.
GARBAGE = frozenset({Code.BAD_MSGPACK, Code.NOT_A_MAP, Code.TOO_DEEP, Code.UNKNOWN_TYPE, Code.BAD_FIELD})


class ProtocolError(Exception):
    """A frame the server refuses; answered with an ``error`` frame carrying ``code``."""

    def __init__(self, code, message="", ref=None, retry_after=None):
        super().__init__(message or code)
        self.code, self.message, self.ref = code, message or code, ref
        self.retry_after = retry_after

    def frame(self):
        frame = error_frame(self.code, self.message, self.ref)
        if self.retry_after is not None:
            frame["retry_after"] = self.retry_after
        return frame


class FramingError(ProtocolError):
    """The byte stream can no longer be split into frames: the connection must close."""


def error_frame(code, message, ref=None):
    frame = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return frame


#: One Packer for the process: msgpack.packb builds a new one per call, which doubled the cost of
#: packing a frame (ops/bench profile). Safe across threads: pack() holds the GIL throughout.
_packer = msgpack.Packer(use_bin_type=True)


def pack(frame):
    """The msgpack body of a frame, without the length header."""
    return _packer.pack(frame)


def encode(frame):
    """One frame on the wire: 4-byte big-endian length, then the msgpack map."""
    body = pack(frame)
    return HEADER.pack(len(body)) + body


class Template:
    """A frame packed once for many copies that differ only by their ``seq`` and ``ts`` (the
    copies of a group message): ``stamp`` appends those two to the shared bytes instead of
    packing the whole map again per copy (packing was ~13% of a fan-out, ops.bench fanout).
    The two integers take msgpack's fixed 8-byte form, which every decoder reads."""
    __slots__ = ("head",)

    def __init__(self, frame):
        size = len(frame) + 2
        if size > 15 or "seq" in frame or "ts" in frame:
            raise ValueError("a template is a fixmap of at most 13 fields without seq and ts")
        self.head = bytes([0x80 | size]) + pack(frame)[1:]

    def stamp(self, seq, ts):
        return b"".join((self.head, b"\xa3seq\xcf", seq.to_bytes(8, "big"), b"\xa2ts\xcf", ts.to_bytes(8, "big")))


def frame_bytes(body):
    """Wire bytes for an already packed body (offd stores packed bodies)."""
    return HEADER.pack(len(body)) + body


def unpack(body):
    """Decode one frame body; raises ProtocolError(bad_msgpack|not_a_map|too_deep).

    Every container and string limit is bounded by the body's own size, so a few
    hostile bytes cannot make the decoder allocate more than the frame (msgpack's
    defaults allow arrays of ~100 million elements).
    """
    n = len(body)
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, max_str_len=n, max_bin_len=n,
                              max_array_len=n, max_map_len=n, max_ext_len=n, ext_hook=_no_ext)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(Code.BAD_MSGPACK, f"undecodable msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Code.NOT_A_MAP, f"a frame must be a map, not {type(obj).__name__}")
    _plain(obj)
    return obj


def _no_ext(code, data):
    raise ValueError(f"extension type {code}")


def _plain(obj):
    """Refuse what the decoder lets through but the protocol has no use for, wherever it is:
    map keys other than strings (strict_map_key still allows bin) and the timestamp extension
    (decoded without ext_hook), and containers nested deeper than MAX_DEPTH (``too_deep``).
    Level by level, so it cannot recurse; a flat frame costs one pass over its fields (~0.4 µs
    for a msg)."""
    level = [obj]
    for _ in range(MAX_DEPTH):
        nested = []
        for value in level:
            if type(value) is dict:
                for key, item in value.items():
                    if type(key) is not str:
                        raise ProtocolError(Code.BAD_MSGPACK, "map keys must be strings")
                    if type(item) in _NESTED:
                        nested.append(item)
            elif type(value) is list:
                nested.extend(item for item in value if type(item) in _NESTED)
            else:
                raise ProtocolError(Code.BAD_MSGPACK, "extension types are not part of the protocol")
        if not nested:
            return
        level = nested
    raise ProtocolError(Code.TOO_DEEP, f"containers nested deeper than {MAX_DEPTH}")


_NESTED = frozenset({dict, list, msgpack.Timestamp})


class FrameDecoder:
    """Splits a byte stream into frames.

    ``feed`` returns a list whose items are decoded maps or ProtocolError
    instances for frames that were well delimited but undecodable: those cost
    the client an error frame, not its connection. A fatal framing error is
    the list's last item, a FramingError, after the frames that preceded it in
    the stream (they are answered before the connection closes); from then on
    every ``feed`` returns just that error. ``split`` is the same with the
    bodies left undecoded (:func:`decode` each when its turn comes): the server
    decodes a read's frames one by one, between which it can yield or close.
    """

    def __init__(self, max_frame):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._failed = None

    def __repr__(self):
        return f"<FrameDecoder buffered={len(self._buf)} max_frame={self.max_frame}>"

    def feed(self, data):
        return [decode(body) if type(body) is bytes else body for body in self.split(data)]

    def ready(self):
        """True when ``split`` would return something now (a whole frame, or the failure)."""
        buf = self._buf
        if self._failed is not None:
            return True
        if len(buf) < 4:
            return False
        (length,) = HEADER.unpack_from(buf, 0)
        return length == 0 or length > self.max_frame or len(buf) - 4 >= length

    def split(self, data=b"", most=None):
        """Like ``feed``, bodies undecoded; with ``most``, at most that many: the rest stays
        buffered for the next call (a 64 KB read of pings is ~5,000 frames, and a flooder is
        closed after a few dozen: splitting the rest cost the node 6 ms per read)."""
        if self._failed is not None:
            return [self._failed]
        buf = self._buf
        buf += data
        out, pos, size = [], 0, len(buf)
        while size - pos >= 4 and len(out) != most:
            (length,) = HEADER.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame:
                self._failed = (FramingError(Code.BAD_FRAME, "zero-length frame") if length == 0 else
                                FramingError(Code.FRAME_TOO_LARGE,
                                             f"frame of {length} bytes exceeds max_frame {self.max_frame}"))
                self._buf = bytearray()
                out.append(self._failed)
                return out
            if size - pos - 4 < length:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + length]))
            pos += 4 + length
        del buf[:pos]
        return out


def decode(body):
    """One frame body as :func:`unpack` decodes it, or the ProtocolError it raised, kept without
    its traceback: the traceback's frames hold the decoded value, and 200 frames nested 1,000
    deep, decoded in one read, held 13 MB and grew the node's RSS by 140 MB (ops/attack.py)."""
    try:
        return unpack(body)
    except ProtocolError as exc:
        exc.__context__ = None
        return exc.with_traceback(None)


# --- frame schemas -----------------------------------------------------------------

def _str(lo, hi):
    def check(v):
        return isinstance(v, str) and lo <= len(v) <= hi
    check.doc = f"string of {lo}..{hi} characters"
    return check


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63


_int.doc = "integer 0..2^63-1"


def _ids(v):
    return (isinstance(v, list) and 1 <= len(v) <= MAX_IDS
            and all(isinstance(i, str) and 1 <= len(i) <= MAX_ID for i in v))


_ids.doc = f"array of 1..{MAX_IDS} message ids"


def _versions(v):
    return isinstance(v, list) and 1 <= len(v) <= 16 and all(_int(i) for i in v)


_versions.doc = "array of 1..16 integers"


def _one_of(*values):
    def check(v):
        return v in values
    check.doc = "one of " + ", ".join(map(repr, values))
    return check


def _bool(v):
    return isinstance(v, bool)


_bool.doc = "true or false"


def _text(v):
    return isinstance(v, str)


_text.doc = "a string"


def _user(v):
    return isinstance(v, str) and v != ""


_user.doc = "a non-empty string (a name outside the rule is no user: unknown_user, auth_failed)"


def _users(lo):
    def check(v):
        return isinstance(v, list) and lo <= len(v) <= MAX_IDS and all(_user(u) for u in v)
    check.doc = f"array of {lo}..{MAX_IDS} user names"
    return check


def _bundle(v):
    return isinstance(v, (bytes, str)) and len(v) > 0


_bundle.doc = "a non-empty binary or string (opaque to the server)"

_ref = _int
_group = _str(1, 64)
_name = _str(1, 100)

#: type -> {field: (required, check)}. Unknown extra fields are ignored, as is any
#: ``from`` a client claims: the sender is always the authenticated user.
SCHEMAS = {
    "hello": {"ref": (True, _ref), "versions": (True, _versions), "client": (False, _str(0, 128))},
    # any string: the rules are register's (bad_username, bad_password) and login's (auth_failed)
    "register": {"ref": (True, _ref), "user": (True, _text), "password": (True, _text),
                 "invite": (False, _str(1, 64))},
    # the primary device logs in with the password, a companion with its device id and token
    "login": {"ref": (True, _ref), "user": (True, _text), "password": (False, _text),
              "device": (False, _int), "token": (False, _str(1, 128))},
    "msg": {"ref": (True, _ref), "id": (True, _str(1, MAX_ID)), "to": (False, _user),
            "group": (False, _group), "body": (True, _text)},
    "ack": {"seq": (True, _int)},
    "read": {"ref": (True, _ref), "to": (True, _user), "ids": (True, _ids), "group": (False, _group)},
    "ping": {"ref": (False, _ref)},
    # groups
    "group_create": {"ref": (True, _ref), "name": (True, _name), "members": (False, _users(0))},
    "group_add": {"ref": (True, _ref), "group": (True, _group), "members": (True, _users(1))},
    "group_remove": {"ref": (True, _ref), "group": (True, _group), "members": (True, _users(1))},
    "group_leave": {"ref": (True, _ref), "group": (True, _group)},
    "group_admin": {"ref": (True, _ref), "group": (True, _group), "user": (True, _user),
                    "admin": (True, _bool)},
    "group_rename": {"ref": (True, _ref), "group": (True, _group), "name": (True, _name)},
    "group_info": {"ref": (True, _ref), "group": (True, _group)},
    "group_list": {"ref": (True, _ref)},
    # presence and typing
    "presence_sub": {"ref": (True, _ref), "user": (True, _user)},
    "presence_unsub": {"ref": (True, _ref), "user": (True, _user)},
    "privacy": {"ref": (True, _ref), "last_seen": (True, _one_of("everyone", "nobody"))},
    "typing": {"ref": (False, _ref), "to": (False, _user), "group": (False, _group),
               "state": (True, _one_of("typing", "recording", "paused"))},
    # blocking
    "block": {"ref": (True, _ref), "user": (True, _user)},
    "unblock": {"ref": (True, _ref), "user": (True, _user)},
    "block_list": {"ref": (True, _ref)},
    # accounts
    "passwd": {"ref": (True, _ref), "old": (True, _text), "new": (True, _text)},
    "delete_account": {"ref": (True, _ref), "password": (True, _text)},
    "invite_create": {"ref": (True, _ref)},
    # devices
    "link_code": {"ref": (True, _ref)},
    "link": {"ref": (True, _ref), "user": (True, _text), "code": (True, _str(1, 32)), "name": (True, _name)},
    "devices": {"ref": (True, _ref)},
    "unlink": {"ref": (True, _ref), "device": (True, _int)},
    "history": {"ref": (True, _ref), "device": (True, _int), "bundle": (True, _bundle)},
    "info": {"ref": (True, _ref), "to": (True, _user), "id": (True, _str(1, MAX_ID))},
    # push notifications
    "push_register": {"ref": (True, _ref), "kind": (True, _str(1, 32)), "token": (True, _str(1, 4096))},
    "push_unregister": {"ref": (True, _ref)},
}

def check_account(user, password, limits, ref):
    """``register``'s rules (docs/PROTOCOL.md, "Frames"): a name of 1..``max_username`` of
    A-Z a-z 0-9 _ . - (``bad_username``) and a password of ``min_password``..``max_password``
    characters (``bad_password``); ``limits`` maps those three names to the accounts.* settings."""
    if not (len(user) <= limits["max_username"] and NAME_CHARS.fullmatch(user)):
        raise ProtocolError(Code.BAD_USERNAME, f"user names are 1..{limits['max_username']} of "
                            f"A-Z a-z 0-9 _ . -", ref)
    if not limits["min_password"] <= len(password) <= limits["max_password"]:
        raise ProtocolError(Code.BAD_PASSWORD, f"passwords are {limits['min_password']}.."
                            f"{limits['max_password']} characters", ref)


#: Frame types that address either one user (``to``) or one group (``group``): exactly one.
ADDRESSED = frozenset({"msg", "typing"})


_shown = reprlib.Repr()
_shown.maxlevel, _shown.maxstring, _shown.maxother = 2, 60, 60


def _show(value):
    """A client's value in an error message: short, and bounded however it nests."""
    return _shown.repr(value)


def parse(frame):
    """Check a decoded map against its schema; returns (type, frame).

    Raises ProtocolError(unknown_type|bad_field) carrying the frame's ``ref``
    when it has a usable one, so the client can match the error to its request.
    """
    ref = frame.get("ref")
    ref = ref if _int(ref) else None
    ftype = frame.get("type")
    schema = SCHEMAS.get(ftype) if isinstance(ftype, str) else None
    if schema is None:
        raise ProtocolError(Code.UNKNOWN_TYPE, f"unknown frame type {_show(ftype)}", ref)
    for name, (required, check) in schema.items():
        if name not in frame:
            if required:
                raise ProtocolError(Code.BAD_FIELD, f"{ftype}: missing field {name!r}", ref)
        elif not check(frame[name]):
            doc = getattr(check, "doc", "")
            raise ProtocolError(Code.BAD_FIELD, f"{ftype}: field {name!r} must be {doc}".strip(), ref)
    if ftype in ADDRESSED and ("to" in frame) == ("group" in frame):
        raise ProtocolError(Code.BAD_FIELD, f"{ftype}: give exactly one of 'to' and 'group'", ref)
    return ftype, frame
