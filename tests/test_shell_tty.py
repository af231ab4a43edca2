"""An operator attaches whatsup-shell in a real terminal (a pty): prompt, line editing, history, Ctrl-D."""
import os
import sys

import pexpect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP, LEFT = "\x1b[A", "\x1b[D"


def test_an_interactive_attach_in_a_terminal_edits_lines_recalls_history_and_leaves_the_node_running(
        server, tmp_path):
    server.register("alice")
    alice = server.client("alice")
    env = {**os.environ, "TERM": "xterm", "XDG_STATE_HOME": str(tmp_path / "state")}
    term = pexpect.spawn(sys.executable, [os.path.join(ROOT, "bin", "whatsup-shell"), "--data-dir",
                                          server.data_dir], env=env, encoding="utf-8", timeout=20,
                         dimensions=(40, 160))
    try:
        term.expect("arbitrary code execution")
        term.expect_exact("whatsup> ")
        term.sendline("ps(kind='session')")
        term.expect(r"session\s+alice")
        term.expect_exact("whatsup> ")
        term.send("len(sm)+1" + LEFT + "4\r")  # the cursor moved back: the line reads len(sm)+41
        term.expect_exact("42")
        term.expect_exact("whatsup> ")
        term.send(UP + UP + "\r")  # history: ps(kind='session') again
        term.expect(r"session\s+alice")
        term.expect_exact("whatsup> ")
        term.sendline("for k in range(2):")
        term.expect_exact("...> ")
        term.sendline("    print('line', k)")
        term.sendline("")
        term.expect_exact("line 1")
        term.expect_exact("whatsup> ")
        term.sendeof()
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    assert "ps(kind='session')" in (tmp_path / "state" / "whatsup" / "shell_history").read_text()
    assert alice.ping()["type"] == "pong"
