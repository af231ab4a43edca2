"""The operator shell: a REPL inside the running node, its helpers, and hot code reload.

* :mod:`.server` — the backdoor the node serves (Unix socket 0600 or loopback);
* :mod:`.helpers` — what the operator types: ``ps()``, ``i(pid)``, ``drain()``, ``reload()``...;
* :mod:`.drain` — what fast-draining a mailbox does with each kind of message;
* :mod:`.reload` — load a module's new code and swap it into live processes;
* :mod:`.client` — the client side, used by ``whatsup-shell`` and the tests.

This top level holds only what server and client agree on (where the shell
listens, its prompts, the mark of a failed ``-c``) and imports nothing heavy,
so the client side stays light.
"""
import ipaddress
import os

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
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit():
        raise ValueError(f"shell.listen {text!r} must be 'unix:', 'unix:PATH', a loopback host:port or 'off'")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"shell.listen {text!r} refused: the operator shell is arbitrary code execution, "
                         f"so it listens only on a Unix socket or on loopback (127.0.0.0/8, ::1)")
    return "tcp", (host, int(port))
