"""The control server: the process in the node's tree serving the control socket (docs/ADMIN.md).

Its ``init`` binds ``control.socket`` (mode 0600, see
:func:`whatsup.shell.server.bind_unix`) and serves it with a StreamServer whose
connection greenlets come from a small pool owned by this process, so
stopping the process (the tree stopping) closes the socket and ends them.
A connection reads JSON lines; each request runs one command of
:mod:`whatsup.ctl.commands` and gets one answer line. Every request that
changes something is logged at WARNING with the peer's uid and pid
(SO_PEERCRED), the others at INFO; passwords are never logged.
"""
import logging
import os
import pwd
import socket
import struct

from gevent.pool import Pool
from gevent.server import StreamServer

from ..c2s.admission import Refused as NotNow
from ..config import ConfigError
from ..protocol import ProtocolError
from ..runtime import StartFailed
from ..runtime.factory import ShardDown
from ..shell.server import bind_unix
from . import MAX_LINE, SOCKET_NAME, Refused, decode, encode
from .commands import COMMANDS

log = logging.getLogger("whatsup.ctl")
CONNECTIONS = 8    # operators' connections served at once; more wait in the listen backlog
SECRET = frozenset({"password"})


def socket_path(setting, data_dir):
    """``control.socket`` -> the socket's path, or None when it is "off"."""
    if setting == "off":
        return None
    return setting or os.path.join(data_dir, SOCKET_NAME)


def peer(sock):
    """``"uid 1000 (alice), pid 4242"``: who is at the other end of a Unix socket."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       struct.calcsize("3i")))
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"uid {uid} ({name}), pid {pid}"


class ControlServer:
    """gen_server callbacks; ``init(proc, node, path)``."""
    kind = "control"
    vsn = 1

    @staticmethod
    def init(proc, node, path):
        try:
            listener = bind_unix(path, "its control socket")
        except (OSError, ConfigError) as exc:
            raise StartFailed(f"cannot serve the control socket on {path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        state = {"node": node, "path": path, "requests": 0, "server": None}
        state["server"] = StreamServer(listener, lambda sock, addr: ControlServer._serve(state, sock),
                                       spawn=Pool(CONNECTIONS))
        state["server"].start()
        log.info("control socket on %s (whatsupctl)", path)
        return state

    @staticmethod
    def describe(state):
        server = state["server"]
        return {"path": state["path"], "connections": len(server.pool), "requests": state["requests"]}

    @staticmethod
    def terminate(proc, reason, state):
        state["server"].stop(timeout=1)
        try:
            os.unlink(state["path"])
        except FileNotFoundError:
            pass

    @staticmethod
    def _serve(state, sock):
        """One operator's connection: a request per line until they hang up."""
        who = peer(sock)
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    sock.sendall(encode({"ok": False, "error": "bad_request", "message": "line too long"}))
                    return
                state["requests"] += 1
                sock.sendall(encode(ControlServer.answer(state["node"], who, line)))
        except OSError:
            pass  # the operator hung up mid-answer
        finally:
            reader.close()
            sock.close()

    @staticmethod
    def answer(node, who, line):
        """The answer (a dict) to one request line from ``who``."""
        rid = None
        try:
            request = decode(line)
            rid = request.get("id")
            cmd = COMMANDS.get(request.get("cmd"))
            if cmd is None:
                raise Refused("unknown_command", f"unknown command {request.get('cmd')!r}")
            args = cmd.check(request.get("args", {}))
            shown = {k: ("***" if k in SECRET else v) for k, v in args.items()}
            log.log(logging.WARNING if cmd.changes else logging.INFO, "admin %s by %s: %s",
                    cmd.name, who, shown)
            result = cmd.fn(node, who, **args)
        except Refused as exc:
            return {"id": rid, "ok": False, "error": exc.code, "message": exc.message}
        except ProtocolError as exc:  # a store refused (store_failed...)
            return {"id": rid, "ok": False, "error": exc.code, "message": exc.message}
        except NotNow as exc:  # no hashing capacity now
            return {"id": rid, "ok": False, "error": exc.code, "message": f"{exc}; retry in {exc.retry_after}s"}
        except ShardDown as exc:
            return {"id": rid, "ok": False, "error": "store_failed", "message": str(exc)}
        except Exception as exc:
            log.exception("admin request %.200r by %s failed", line, who)
            return {"id": rid, "ok": False, "error": "internal", "message": f"{type(exc).__name__}: {exc}"}
        return {"id": rid, "ok": True, "result": result}
