"""The client side of the operator shell: plain blocking sockets, no gevent.

The backdoor speaks a text REPL: it writes output, then a prompt
(``whatsup.shell.PROMPT`` or ``MORE``), then waits for a line. Everything up to
a prompt is one answer. ``run`` wraps an expression in the namespace's ``_c``
so a script gets the repr of the result and can tell a failure (``ERROR_MARK``)
from a success; ``interact`` relays lines typed at a local prompt, so line
editing and history are the local terminal's (readline), not the socket's.
"""
import codecs
import socket

from . import ERROR_MARK, MORE, PROMPT


class NotListening(ConnectionError):
    """No node answers on that address; the message says where we looked."""


def connect(kind, address, timeout, what="shell"):
    """A blocking socket connected to a node's ``what`` socket ("unix" path or TCP (host, port));
    NotListening, with a one-line reason, when nobody answers or the 0600 mode keeps us out."""
    family = socket.AF_UNIX if kind == "unix" else (
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    where = f"unix:{address}" if kind == "unix" else "{}:{}".format(*address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise NotListening(f"no whatsup node is listening on {where} ({exc.strerror})") from None
    except PermissionError:
        sock.close()
        raise NotListening(f"permission denied on {where}: the {what} socket is mode 0600, "
                           f"run as the node's user") from None
    return sock


class Connection:
    """A blocking connection to one of the node's operator sockets (the shell's, the control
    socket's); ``with`` closes it."""

    def __init__(self, kind, address, timeout, what):
        self.sock = connect(kind, address, timeout, what)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()


class ShellClient(Connection):
    def __init__(self, kind, address, timeout=60.0):
        super().__init__(kind, address, timeout, "shell")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self.banner, self.prompt = self.read_answer()

    def read_answer(self):
        """Everything up to the next prompt: (text, prompt); prompt is None if the node hung up."""
        while not self._buf.endswith((PROMPT, MORE)):
            data = self.sock.recv(65536)
            if not data:
                text, self._buf = self._buf, ""
                return text, None
            self._buf += self._decoder.decode(data)
        prompt = PROMPT if self._buf.endswith(PROMPT) else MORE
        text, self._buf = self._buf[:-len(prompt)], ""
        return text, prompt

    def send_line(self, text):
        """Send ``text`` a line at a time, as typed, and return what the node answered to all of it."""
        answers = []
        for line in text.split("\n"):
            self.sock.sendall((line + "\n").encode())
            answer, self.prompt = self.read_answer()
            answers.append(answer)
        return "".join(answers)

    def run(self, source):
        """Evaluate ``source`` in the node: (printed output, True unless it raised)."""
        text = self.send_line(f"_c({source!r})")
        ok = ERROR_MARK not in text and self.prompt is not None  # no prompt: the node hung up
        return text.replace(ERROR_MARK + "\n", ""), ok

    def interact(self, read_line, write):
        """Relay lines from ``read_line(prompt)`` (EOFError ends) and write the answers."""
        write(self.banner + "\n")
        while self.prompt is not None:
            try:
                line = read_line(self.prompt)
            except EOFError:
                write("\n")
                return
            except KeyboardInterrupt:
                write("\nKeyboardInterrupt\n")
                continue
            write(self.send_line(line))
