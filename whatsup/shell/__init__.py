"""The operator shell: a REPL inside the running node, its helpers, and hot code reload.

* :mod:`.server` — the backdoor the node serves (Unix socket 0600 or loopback);
* :mod:`.helpers` — what the operator types: ``ps()``, ``i(pid)``, ``drain()``, ``reload()``...;
* :mod:`.drain` — what fast-draining a mailbox does with each kind of message;
* :mod:`.reload` — load a module's new code and swap it into live processes;
* :mod:`.client` — the client side, used by ``whatsup-shell`` and the tests.

This top level holds only what server and client agree on (where the shell
listens, its prompts, the mark of a failed ``-c``, how a table prints) and
imports nothing heavy, so the client side (and whatsupctl) stays light.
"""
import os

from .. import address

PROMPT, MORE = "whatsup> ", "    ...> "
ERROR_MARK = "!! whatsup-shell: the expression raised"
SOCKET_NAME = "backdoor.sock"


def parse_listen(text, data_dir):
    """``shell.listen`` -> ("off", None) | ("unix", path) | ("tcp", (host, port)); ValueError if refused."""
    text = text.strip()
    if text == "off":
        return "off", None
    if text.startswith("unix:"):
        return "unix", text[5:] or os.path.join(data_dir, SOCKET_NAME)
    try:
        return "tcp", address.loopback(text, "shell.listen", "the operator shell is arbitrary code execution")
    except ValueError as exc:
        raise ValueError(f"{exc}; or use 'unix:', 'unix:PATH' or 'off'") from None


class Table(list):
    """Rows (dicts) that print as an aligned text table in the shell and stay data in code."""

    def __init__(self, rows, columns):
        super().__init__(rows)
        self.columns = columns

    def __repr__(self):
        cells = [[c.upper() for c in self.columns]]
        cells += [[_cell(row.get(c)) for c in self.columns] for row in self]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
