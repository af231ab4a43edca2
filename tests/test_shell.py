"""The operator shell, driven over its socket as an operator would (README "Operator shell")."""
import os
import socket
import stat
import subprocess
import sys

import pytest

from social import wait_for
from whatsup.store.offd import shard_of
from whatsup.shell import ERROR_MARK, parse_listen
from whatsup.shell.client import ShellClient
from whatsup.shell.helpers import Block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL = os.path.join(ROOT, "bin", "whatsup-shell")


def whatsup_shell(*args):
    return subprocess.run([sys.executable, SHELL, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def online(server):
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    yield server, alice, bob
    alice.close()
    bob.close()


def test_ps_lists_the_connected_sessions_with_their_users(online, ask):
    server, alice, bob = online
    with server.shell() as sh:
        rows = ask(sh, "[(r['who'], r['kind'], str(r['pid'])) for r in ps(kind='session')]")
        users = {who: pid for who, kind, pid in rows if who in ("alice", "bob")}
        assert set(users) == {"alice", "bob"} and {kind for _, kind, _ in rows} == {"session"}
        # the pid spellings the helpers accept all name the same process
        n = int(users["alice"].rstrip(">").rsplit(".", 1)[1])
        assert ask(sh, f"[str(i(p)['pid']) for p in ('alice', {n}, {users['alice']!r})]") == [users["alice"]] * 3
        table, ok = sh.run("ps(sort='-handled')")
    assert ok and table.splitlines()[0].split()[:3] == ["PID", "KIND", "WHO"]
    assert any(line.split()[1:3] == ["session", "bob"] for line in table.splitlines())
    cli = whatsup_shell("--data-dir", server.data_dir, "-c", "top(3)")
    assert cli.returncode == 0 and "MAILBOX" in cli.stdout


def test_where_answers_for_a_connected_user_and_an_offline_one(online, ask):
    server, alice, bob = online
    server.register("carol")
    with server.shell() as sh:
        pid = ask(sh, "str(sm.lookup('alice'))")
        found = ask(sh, "(lambda w: (str(w['pid']), w['online'], w['node'], w['offd']['shard'], w['worker']))"
                        "(where('user', 'alice'))")
        assert found[:4] == (pid, True, "whatsup@localhost", shard_of("alice", 4)) and pid in found[4]
        shard, path = ask(sh, "(lambda w: (w['shard'], w['path']))(where('offd', 'carol'))")
        assert shard == shard_of("carol", 4) and path.endswith(f"shard-{shard:03d}")
        assert ask(sh, "where('session', 'carol')['online']") is False


def test_update_changes_a_live_session_state_inside_the_process(online, ask):
    server, alice, bob = online
    with server.shell() as sh:
        sh.send_line("def mark(st):\n    st.marked_inside = gevent.getcurrent() is i('alice')['greenlet']\n")
        assert sh.prompt == "whatsup> "
        ask(sh, "update('alice', mark) and None")
        assert ask(sh, "state('alice').marked_inside") is True
        ask(sh, "update('alice', lambda st: setattr(st, 'frames_in', st.frames_in + 1000)) and None")
        assert ask(sh, "i('alice')['detail']['frames_in']") >= 1000
    assert alice.ping()["type"] == "pong"  # the session goes on with its changed state
    assert alice.send("bob", "still here")["type"] == "sent"


def test_drain_spools_a_stuffed_mailbox_and_the_recipient_gets_every_message(online, ask):
    server, alice, bob = online
    with server.shell() as sh:
        assert "suspended" in ask(sh, "suspend('bob')")
        ids = [alice.send("bob", f"m{k}", id=f"m{k}")["id"] for k in range(40)]  # each ✓: in offd
        bob.send_nowait("alice", "from a suspended session", id="b1")
        # its bytes reach bob's mailbox through the hub's read watcher: before the drain, not after
        wait_for(lambda: ("data",) in [m[:1] for m in ask(sh, "mailbox('bob', 100)")], "bob's frame in his mailbox")
        peek = ask(sh, "mailbox('bob', 100)")
        assert peek.count(("poke",)) == 1  # 40 messages, one wake-up: the router's pokes coalesce
        report = ask(sh, "{k: v for k, v in drain('bob').items() if k != 'pid'}")
        assert "poke" not in report["removed"] and report["after"] <= report["before"]
        after = ask(sh, "[m[0] for m in mailbox('bob', 100)]")
        assert after.count("poke") == 1 and after[-1] == "poke"
        assert ask(sh, "len(offd.items('bob'))") == 40  # the drained messages are in offd
        assert "resumed" in ask(sh, "resume('bob')")
    got = []
    while len(got) < 40:
        frame = bob.recv(10)
        assert frame is not None, f"bob got {len(got)} of 40"
        if frame["type"] == "msg":
            got.append(frame["id"])
    assert got == ids
    assert bob.recv(10)["id"] == "b1"  # the device's own input was kept: its message went through
    assert "drain" in server.log() and "to offd" in server.log()


def test_drain_to_drop_is_explicit_logged_and_loses_nothing_from_offd(online, ask):
    server, alice, bob = online
    with server.shell() as sh:
        ask(sh, "suspend('bob')")
        for k in range(5):
            alice.send("bob", f"d{k}", id=f"d{k}")
        ask(sh, "drain('bob', to='drop')['removed']")
        ask(sh, "resume('bob')")
        out, ok = sh.run("drain('bob', to='nowhere')")
        assert not ok and "to must be one of" in out
    assert [bob.recv(10)["id"] for _ in range(5)] == [f"d{k}" for k in range(5)]
    assert "WARNING whatsup.shell: operator drain" in server.log() and "to drop" in server.log()


def test_kill_ends_a_session_and_says_why(online, ask):
    server, alice, bob = online
    with server.shell() as sh:
        assert "killed" in ask(sh, "kill('alice', 'operator test')")
    with pytest.raises(ConnectionError):
        for _ in range(50):
            alice.ping()
    assert "operator test" in server.log()


def test_the_unix_socket_is_0600_and_tcp_is_served_on_loopback_only(make_server, ask):
    srv = make_server()
    mode = os.stat(srv.shell_socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with socket.socket(socket.AF_UNIX) as raw:  # what `printf 'len(sm)\n' | nc -U backdoor.sock` does
        raw.settimeout(30)
        raw.connect(srv.shell_socket)
        raw.sendall(b"len(sm)\n")
        raw.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: raw.recv(4096), b"")).decode()
    assert "arbitrary code execution" in answer and "whatsup> 0\nwhatsup> " in answer
    with pytest.raises(RuntimeError) as refused:
        make_server({"shell.listen": "0.0.0.0:7399"}, name="exposed")
    assert "shell.listen '0.0.0.0:7399' refused" in str(refused.value)
    tcp = make_server({"shell.listen": "127.0.0.1:0"}, name="tcp")
    port = int(tcp.log().split("operator shell on 127.0.0.1:")[1].split()[0])
    with ShellClient("tcp", ("127.0.0.1", port)) as sh:
        assert ask(sh, "len(sm)") == 0
    assert not os.path.exists(tcp.shell_socket)


@pytest.mark.parametrize("listen, expected", [
    ("unix:", ("unix", "/d/backdoor.sock")), ("unix:/run/w.sock", ("unix", "/run/w.sock")),
    ("off", ("off", None)), ("127.0.0.1:7300", ("tcp", ("127.0.0.1", 7300))),
    ("127.1.2.3:7300", ("tcp", ("127.1.2.3", 7300))), ("[::1]:7300", ("tcp", ("::1", 7300))),
])
def test_shell_listen_accepts_unix_sockets_and_loopback(listen, expected):
    assert parse_listen(listen, "/d") == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:7300", "10.0.0.1:7300", "[::]:7300", "localhost:7300",
                                    "example.com:7300", "7300"])
def test_shell_listen_refuses_anything_else(listen):
    with pytest.raises(ValueError):
        parse_listen(listen, "/d")


def test_stats_and_i_print_as_aligned_key_value_blocks(server):
    assert repr(Block({"a": 1, "long_key": {"x": 2.5004, "yy": None}, "c": "text", "d": ""})) == (
        "a         1\nlong_key\n  x   2.5\n  yy  -\nc         text\nd         ''")
    out = whatsup_shell("--socket", server.shell_socket, "-c", "stats(0.1)").stdout.splitlines()
    top = [line for line in out if not line.startswith(" ")]
    assert len({len(line) - len(line.split("  ", 1)[1].lstrip()) for line in top if "  " in line}) == 1
    assert any(line.startswith("mailbox") for line in top)
    assert any(line.startswith("  p50 ") for line in out)


def test_whatsup_shell_c_prints_the_result_and_fails_when_the_node_raised(server):
    ok = whatsup_shell("--socket", server.shell_socket, "-c", "sorted(stats())")
    assert ok.returncode == 0 and "msgs_in_per_s" in ok.stdout and "mailbox" in ok.stdout
    bad = whatsup_shell("--socket", server.shell_socket, "-c", "i(99999)")
    assert bad.returncode == 1 and "ProcessDead" in bad.stdout and ERROR_MARK not in bad.stdout


def test_help_without_arguments_lists_the_helpers_instead_of_waiting_for_input(server):
    out = whatsup_shell("--socket", server.shell_socket, "-c", "help()")
    assert out.returncode == 0 and "ps(kind=None" in out.stdout and "where(" in out.stdout
    shown = whatsup_shell("--socket", server.shell_socket, "-c", "help(ps)")
    assert shown.returncode == 0 and "Processes as a table" in shown.stdout


def test_whatsup_shell_says_so_when_no_node_listens(tmp_path):
    out = whatsup_shell("--socket", str(tmp_path / "nobody.sock"), "-c", "1")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"Error: no whatsup node is listening on unix:{tmp_path / 'nobody.sock'} (No such file or directory)"]


def test_a_killed_nodes_stale_socket_is_replaced_and_a_live_one_is_not_taken_over(make_server, ask):
    srv = make_server()
    srv.restart()  # kill -9 leaves backdoor.sock behind
    with srv.shell() as sh:
        assert ask(sh, "len(sm)") == 0
    with pytest.raises(RuntimeError) as refused:
        make_server({"shell.listen": f"unix:{srv.shell_socket}"}, name="second")
    assert f"another node already serves its operator shell on {srv.shell_socket}" in str(refused.value)
    with srv.shell() as sh:
        assert ask(sh, "len(sm)") == 0
