"""The node's files and descriptors (docs/RELIABILITY.md, "Hostile traffic"): an owner-only data
dir whatever the umask, and running out of descriptors without tracebacks or locking users out."""
import os
import socket
import stat
import sys
import time

import pytest

from whatsup import protocol
from whatsup.testing import ServerProcess

WHATSUPD = [sys.executable, "-m", "whatsup.cli.whatsupd"]


def under_umask_000():
    return ["sh", "-c", 'umask 000; exec "$0" "$@"', *WHATSUPD]


def test_the_data_dir_is_owner_only_whatever_the_umask(make_server, tmp_path):
    data = tmp_path / "node" / "data"
    data.mkdir(parents=True)
    os.chmod(data, 0o755)
    stale = data / "left-by-an-older-version"
    stale.write_text("x")
    os.chmod(stale, 0o644)
    server = make_server(command=under_umask_000())
    server.register("alice", "bob")
    with server.client("alice") as alice:
        alice.send("bob", "kept in offd")  # bob is offline: a spool segment is written
    with server.shell() as sh:  # the backdoor socket exists while the node runs
        assert sh.run("1")[1]
        modes = {}
        for root, dirs, files in os.walk(data):
            for name in dirs + files:
                path = os.path.join(root, name)
                modes[os.path.relpath(path, data)] = stat.S_IMODE(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    kinds = {"LOCK", "ID", "backdoor.sock", "social.sqlite", "left-by-an-older-version"}
    assert kinds <= set(modes), modes
    assert any(p.startswith("accounts/") and p.endswith(".sqlite") for p in modes)
    assert any(p.startswith("offd/") and os.path.isfile(data / p) for p in modes)
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(data / p) else 0o600)}
    assert wrong == {}


def test_the_node_refuses_in_one_line_a_data_dir_other_users_can_write(tmp_path):
    srv = ServerProcess(tmp_path)
    os.makedirs(srv.data_dir)
    os.chmod(srv.data_dir, 0o777)
    with pytest.raises(RuntimeError) as failed:
        srv.start(timeout=30)
    assert "writable by other users" in str(failed.value)
    assert "Traceback" not in srv.log()
    assert stat.S_IMODE(os.stat(srv.data_dir).st_mode) == 0o777  # nothing was touched


def hello(sock):
    sock.sendall(protocol.encode({"type": "hello", "ref": 1, "versions": [1]}))


def answered(sock, timeout):
    sock.settimeout(timeout)
    try:
        return bool(sock.recv(65536))
    except (socket.timeout, ConnectionError):
        return False


def test_out_of_descriptors_the_node_pauses_accepts_and_accepted_users_and_the_shell_keep_working(make_server):
    server = make_server(command=["prlimit", "--nofile=512:512", *WHATSUPD])
    log = server.log()
    assert "open files: at most 512" in log and "at most 384 connections" in log
    server.register("early")
    early = server.client()  # accepted before the descriptors run out, not logged in yet
    waiting = []
    with server.shell() as sh:
        out, ok = sh.run("exec('import os, resource\\n_n = len(os.listdir(\"/proc/self/fd\"))\\n"
                         "resource.setrlimit(resource.RLIMIT_NOFILE, (_n + 2, 512))')")
        assert ok, out
        for _ in range(12):
            sock = socket.create_connection(server.address, timeout=10)
            hello(sock)
            waiting.append(sock)
        deadline = time.monotonic() + 20
        while "cannot accept connections" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "cannot accept connections" in server.log()
        assert early.login("early", "pw-early")["type"] == "ok"
        assert sh.run("len(node.sm)")[0].strip() == "1"  # the shell still answers
        out, ok = sh.run("resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))")
        assert ok, out
    assert all(answered(sock, 10) for sock in waiting)  # accepted once descriptors came back
    for sock in waiting:
        sock.close()
    early.close()
    assert "Traceback" not in server.log()
