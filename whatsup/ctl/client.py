"""The client side of the control socket: plain blocking sockets, no gevent (docs/ADMIN.md)."""
import itertools

from ..shell.client import Connection, NotListening
from . import MAX_LINE, Refused, decode, encode

__all__ = ["ControlClient", "NotListening"]


class ControlClient(Connection):
    def __init__(self, path, timeout=60.0):
        super().__init__("unix", path, timeout, "control")
        self.path = path
        self._reader = self.sock.makefile("rb")
        self._ids = itertools.count(1)

    def close(self):
        self._reader.close()
        super().close()

    def call(self, cmd, **args):
        """Run ``cmd`` in the node; its result, or Refused(code, message)."""
        rid = next(self._ids)
        self.sock.sendall(encode({"id": rid, "cmd": cmd, "args": args}))
        line = self._reader.readline(MAX_LINE * 64)
        if not line:
            raise NotListening(f"the node closed the control connection on {self.path}")
        answer = decode(line)
        if not answer.get("ok"):
            raise Refused(answer.get("error", "internal"), answer.get("message", ""))
        return answer.get("result")
