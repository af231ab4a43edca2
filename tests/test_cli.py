"""The command lines as README shows them, run as subprocesses."""
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from whatsup import config, protocol
from whatsup.client import Closed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cli(server, tmp_path):
    env = {**os.environ, "WHATSUP_SERVER": server.server, "WHATSUP_PASSWORD": "correct-horse",
           "XDG_STATE_HOME": str(tmp_path / "state")}

    def run(*args, check=True, **kw):
        proc = subprocess.run([os.path.join(ROOT, "bin", "whatsup"), *args], **{"env": env, **kw},
                              capture_output=True, text=True, timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc
    run.env = env
    return run


def test_register_send_and_inbox_with_ticks(cli):
    cli("register", "alice")
    cli("register", "bob")
    assert "user_taken" in cli("register", "bob", check=False).stderr
    mid = cli("send", "--as", "alice", "bob", "hi bob").stdout.strip()
    assert len(mid) == 32
    lines = [json.loads(line) for line in cli("inbox", "--as", "bob", "--json").stdout.splitlines()]
    assert [(m["type"], m["from"], m["body"], m["id"]) for m in lines] == [("msg", "alice", "hi bob", mid)]
    assert cli("inbox", "--as", "bob").stdout == "no new messages\n"  # acked: gone
    out = cli("inbox", "--as", "alice").stdout
    assert "✓✓ delivered to bob: " + mid in out
    assert "auth_failed" in cli("inbox", "--as", "bob", "--password", "wrong!!", check=False).stderr


def test_watching_presence_leaves_the_inbox_alone(cli):
    cli("register", "alice")
    cli("register", "bob")
    cli("send", "--as", "bob", "alice", "while alice watches")
    assert "bob" in cli("presence", "--as", "alice", "bob", "--watch", "1").stdout
    assert "bob: while alice watches" in cli("inbox", "--as", "alice").stdout  # not acked unseen


def test_a_command_whose_server_dies_under_it_says_so_in_one_line(cli, server):
    cli("register", "alice")
    cli("register", "bob")
    proc = subprocess.Popen([os.path.join(ROOT, "bin", "whatsup"), "presence", "--as", "alice", "bob",
                             "--watch", "60"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert "bob" in proc.stdout.readline()  # logged in and watching
    server.kill()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.startswith("Error: lost the connection to whatsupd at ") and err.count("\n") == 1, err

def _reader(proc):
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return lines


@contextlib.contextmanager
def _chat(env, *args):
    """``whatsup chat ARGS`` on pipes: yields (the process, its lines); leaves with /quit, exit 0."""
    chat = subprocess.Popen([os.path.join(ROOT, "bin", "whatsup"), "chat", *args], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        yield chat, _reader(chat)
        chat.stdin.write("/quit\n")
        chat.stdin.flush()
        assert chat.wait(10) == 0
    finally:
        chat.stdin.close()
        chat.wait(10)


def _wait_for(lines, text, timeout=20):
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not in {seen}")


def test_chat_shows_messages_and_all_three_ticks(cli):
    cli("register", "alice")
    cli("register", "bob")
    args = [os.path.join(ROOT, "bin", "whatsup"), "chat", "--as"]
    opts = dict(env=cli.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1)
    bob = subprocess.Popen(args + ["bob", "alice"], **opts)
    alice = subprocess.Popen(args + ["alice", "bob"], **opts)
    try:
        bob_lines, alice_lines = _reader(bob), _reader(alice)
        _wait_for(bob_lines, "chatting with alice")
        _wait_for(alice_lines, "chatting with bob")
        alice.stdin.write("hello from alice\n")
        alice.stdin.flush()
        _wait_for(bob_lines, "alice: hello from alice")
        _wait_for(alice_lines, "me: hello from alice  ✓✓ read")  # the last tick; on a pipe each
        # change is a new line (a terminal rewrites the line: tests/test_chat.py)
        alice.stdin.write("/help\n/quit\n")
        alice.stdin.flush()
        _wait_for(alice_lines, "/quit   leave")
        assert alice.wait(10) == 0
    finally:
        for p in (alice, bob):
            p.stdin.close()
            p.wait(10)


def test_group_commands_say_what_they_did_and_a_group_chat_counts_ticks_per_member(cli, server):
    for user in ("alice", "bob", "carol", "dave"):
        cli("register", user)
    group = cli("group", "create", "--as", "alice", "climbing", "bob").stdout.strip()
    assert cli("group", "add", "--as", "alice", group, "carol", "dave").stdout.startswith(
        f"added carol, dave to {group}")
    assert cli("group", "remove", "--as", "alice", group, "dave").stdout.startswith(f"removed dave from {group}")
    assert cli("group", "leave", "--as", "dave", group, check=False).returncode != 0  # not a member now
    assert cli("group", "list", "--as", "dave").stdout == "no groups\n"
    out = cli("inbox", "--as", "dave").stdout
    assert "alice added carol, you" in out and "alice removed you" in out
    with _chat(cli.env, "--as", "alice", "--group", group) as (chat, lines):
        _wait_for(lines, f"chatting in {group}")
        chat.stdin.write("Saturday?\n")
        chat.stdin.flush()
        with server.client("bob", password="correct-horse") as bob:
            got = [f for f in bob.drain(1.0) if f["type"] == "msg"]
            bob.read("alice", [got[-1]["id"]], group=group)
        _wait_for(lines, "me: Saturday?  ✓✓ 1/2 read 1/2")
        with server.client("carol", password="correct-horse") as carol:
            carol.drain(1.0)
        _wait_for(lines, "me: Saturday?  ✓✓ read 1/2")


def test_whatsupd_says_in_one_line_when_the_port_is_taken(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([os.path.join(ROOT, "bin", "whatsupd"), "--listen", f"127.0.0.1:{port}",
                               "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "already in use" in proc.stderr and "Traceback" not in proc.stderr


def test_whatsupd_says_in_one_line_when_the_data_dir_is_unusable(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    proc = subprocess.run([os.path.join(ROOT, "bin", "whatsupd"), "--listen", "127.0.0.1:0",
                           "--data-dir", str(tmp_path / "file" / "data")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_whatsupd_stops_cleanly_on_sigterm(server):
    server.register("alice", "bob")
    alice = server.client("alice")
    alice.send("bob", "sent before the stop", id="s1")
    assert server.stop() == 0
    assert "stopped" in server.log()
    deadline, frames = time.monotonic() + 10, []
    with pytest.raises(Closed):
        while time.monotonic() < deadline:
            frames.append(alice.recv(1))
    assert [f["code"] for f in frames if f and f["type"] == "error"] == [protocol.Code.SHUTTING_DOWN]
    alice.close()
    server.start()
    with server.client("bob") as bob:
        assert [f["id"] for f in bob.drain(0.5) if f["type"] == "msg"] == ["s1"]


def test_a_bad_config_is_refused_in_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[offd]\nshards = -1\n")
    proc = subprocess.run([sys.executable, "-m", "whatsup.cli.whatsupd", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "offd.shards must be at least 0" in proc.stderr and "Traceback" not in proc.stderr


def test_whatsupd_takes_any_setting_from_set_and_the_environment(make_server):
    server = make_server(command=[sys.executable, "-m", "whatsup.cli.whatsupd", "--set", "protocol.max_body=1000"],
                         env={"WHATSUP_PROTOCOL__IDLE_TIMEOUT": "42"})
    with server.client() as c:
        assert (c.hello["max_body"], c.hello["idle_timeout"]) == (1000, 42.0)


def test_a_misspelt_setting_stops_whatsupd_in_one_line_naming_the_nearest(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "whatsup.cli.whatsupd", "--set", "session.windw=5"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr == ("Error: --set session.windw=5: unknown setting 'session.windw'; "
                           "did you mean session.window?\n")


def test_the_shipped_config_is_the_generated_one():
    with open(os.path.join(ROOT, "etc", "whatsupd.toml")) as f:
        assert f.read() == config.render_toml(), "regenerate: python3 -m whatsup.config > etc/whatsupd.toml"
    assert config.load(os.path.join(ROOT, "etc", "whatsupd.toml")).as_dict() == config.load().as_dict()


def test_link_a_second_machine_use_it_without_the_password_give_it_history_list_and_unlink_it(cli, tmp_path):
    cli("register", "alice")
    cli("register", "bob")
    shown = cli("link", "--as", "bob").stdout
    code = shown.split()[0]
    assert "valid for 60 s, once" in shown  # devices.link_ttl
    laptop = {**cli.env, "XDG_STATE_HOME": str(tmp_path / "laptop-state")}
    laptop.pop("WHATSUP_PASSWORD")  # the laptop never knows bob's password
    linked = cli("link", "--code", code, "--name", "laptop", "bob", env=laptop).stdout
    assert "device 1 (laptop) of bob" in linked
    mid = cli("send", "--as", "alice", "bob", "to every device").stdout.strip()
    got = cli("inbox", "--as", "bob", "--json", env=laptop).stdout.splitlines()
    assert [json.loads(line)["body"] for line in got] == ["to every device"]
    assert cli("info", "--as", "alice", "bob", mid).stdout.splitlines() == [
        "bob device 0 (primary): pending", "bob device 1: delivered"]  # message info: the laptop has it
    assert "to every device" in cli("inbox", "--as", "bob").stdout  # the phone still gets it
    assert json.loads(cli("info", "--as", "alice", "--json", "bob", mid).stdout)["devices"] == [
        {"device": 0, "delivered": True}, {"device": 1, "delivered": True}]
    assert "unknown_message" in cli("info", "--as", "alice", "bob", "nope", check=False).stderr
    listed = cli("devices", "--as", "bob", env=laptop).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["0", "primary"], ["1", "laptop"]]
    assert "(this one)" in listed[1]
    assert "sent 1 messages of history to device 1" in cli("history", "--as", "bob", "1").stdout
    assert "history from device 0: 1 messages" in cli("inbox", "--as", "bob", env=laptop).stdout
    chat = cli("chat", "--as", "bob", "alice", env=laptop, input="typed on the laptop\n")  # no password asked
    assert "Password" not in chat.stderr, chat.stderr
    assert "bob: typed on the laptop" in cli("inbox", "--as", "alice").stdout
    cli("unlink", "--as", "bob", "1")
    assert "no longer linked" in cli("inbox", "--as", "bob", env=laptop, check=False).stderr
    assert "is not linked here" in cli("--device", "1", "inbox", "--as", "bob", env=laptop, check=False).stderr


def test_an_inbox_cut_by_a_crash_does_not_show_its_messages_again(cli, server):
    """The node dies after the inbox showed the messages but before their acks were durable (its
    offd committers are parked): they come again after the restart and must not be shown twice."""
    cli("register", "alice")
    cli("register", "bob")
    ids = [cli("send", "--as", "alice", "bob", f"before the crash {i}").stdout.strip() for i in range(3)]
    with server.shell() as sh:
        sh.run("[suspend(p.pid) for p in table.processes() if p.kind == 'commit' and str(p.entity).startswith('offd')]")
    proc = subprocess.Popen([os.path.join(ROOT, "bin", "whatsup"), "inbox", "--as", "bob", "--json", "--wait", "60"],
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shown = [json.loads(proc.stdout.readline())["id"] for _ in ids]
    server.restart()
    _, err = proc.communicate(timeout=30)
    assert shown == ids and proc.returncode == 1 and "lost the connection" in err, err
    assert cli("inbox", "--as", "bob").stdout == "no new messages\n"
