"""The backdoor: a Python REPL served inside the running node (gevent's BackdoorServer).

Contract:

* ``shell.listen`` says where (see :func:`whatsup.shell.parse_listen`): by default a Unix
  socket ``<data_dir>/backdoor.sock`` created with mode 0600 (bound under a
  0177 umask, so there is no moment when another user could connect), or a
  TCP address on loopback only. Anything else refuses to start with a one-line
  :class:`~whatsup.config.ConfigError`: the shell is arbitrary code execution as
  the node's user, and a network address would hand that to the network.
* A stale socket file left by a killed node is replaced; a socket another
  live node still answers on is not (two nodes on one data dir is a mistake).
* Every connection gets a fresh namespace holding the helpers of
  :mod:`whatsup.shell.helpers`; the prompts are ``whatsup.shell.PROMPT`` and
  ``MORE``, so ``whatsup-shell`` can tell where an answer ends.
"""
import logging
import os
import stat
import sys

from gevent import socket
from gevent.backdoor import BackdoorServer

from ..config import ConfigError
from ..runtime.endpoint import Endpoint
from . import MORE, PROMPT, parse_listen
from .helpers import Helpers

log = logging.getLogger("whatsup.shell")


def bind_unix(path, what):
    """A listening Unix socket at ``path`` that only this user can connect to (mode 0600, bound
    under a 0177 umask so there is no moment when another user could). A stale socket left by a
    killed node is replaced; one a live node still answers on is a ConfigError naming ``what``."""
    _clear_stale(path, what)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def _clear_stale(path, what):
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot serve {what} on {path}: a file that is not a socket is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: left behind by a node that was killed
    else:
        raise ConfigError(f"another node already serves {what} on {path}")
    finally:
        probe.close()


class _Server(BackdoorServer):
    def handle(self, conn, address):
        """One operator's console; an operator who hangs up mid-answer (nc, -c) is no error."""
        try:
            super().handle(conn, address)
        except OSError:
            pass


class Backdoor(Endpoint):
    """The node's operator shell server (an Endpoint, as the metrics scrape is)."""
    what = "the operator shell"

    def __init__(self, node, listen):
        super().__init__(node, listen)
        self.path = None

    @property
    def address(self):
        """Where the shell listens, as shell.listen spells it; None when off or stopped."""
        return f"unix:{self.path}" if self.path is not None else super().address

    def _server(self):
        kind, address = parse_listen(self.listen, self.node.data_dir)
        if kind == "off":
            return None
        listener = self._unix(address) if kind == "unix" else self._tcp(address)
        sys.ps1, sys.ps2 = PROMPT, MORE  # the backdoor's console prompts (process-wide, and ours)
        helpers = Helpers(self.node)
        return _Server(listener, locals=helpers.namespace(), banner=helpers.banner())

    def start(self):
        super().start()
        if self.server is not None:
            log.info("operator shell on %s (whatsup-shell attaches; it is arbitrary code execution)",
                     self.address)
        return self

    def stop(self):
        super().stop()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None

    def _unix(self, path):
        sock = bind_unix(path, "its operator shell")
        self.path = path
        return sock

    @staticmethod
    def _tcp(address):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        sock.listen(16)
        return sock
