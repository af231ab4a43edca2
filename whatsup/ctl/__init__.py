"""The control socket: a small command protocol for ``whatsupctl`` (docs/ADMIN.md).

Unlike the operator shell (a Python REPL), the control socket runs only the
commands of :data:`whatsup.ctl.commands.COMMANDS`, each with checked
arguments, so it is safe to script and to hand to a junior operator. It is a
Unix socket, ``<data_dir>/control.sock``, mode 0600; every request is logged
with the peer's uid (SO_PEERCRED).

Wire format, one JSON object per line (UTF-8, ``\\n``-terminated, at most
:data:`MAX_LINE` bytes), any number of requests per connection::

    → {"id": 1, "cmd": "users.ban", "args": {"user": "mallory", "reason": "spam"}}
    ← {"id": 1, "ok": true, "result": {...}}
    ← {"id": 1, "ok": false, "error": "unknown_user", "message": "no such user 'mallory'"}

This top level holds only what server and client agree on and imports
nothing heavy, so the client stays light.
"""
import json

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 16


class Refused(Exception):
    """A command the node refuses: ``code`` (stable, see docs/ADMIN.md) and a message for people."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def encode(obj):
    return (json.dumps(obj, default=str, separators=(",", ":")) + "\n").encode()


def decode(line):
    """One request or answer line -> dict; Refused("bad_request") if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused("bad_request", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Refused("bad_request", "a request is a JSON object")
    return obj
