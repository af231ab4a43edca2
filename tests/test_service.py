"""whatsupd as a system service: sd_notify on a socket the test provides, the unit file, the license."""
import json
import os
import shutil
import socket
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _messages(sock, until, limit=50):
    """Datagrams received until one contains ``until`` (bounded)."""
    got = []
    for _ in range(limit):
        got.append(sock.recv(4096).decode())
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} in {got}")


def test_the_node_says_ready_pings_the_watchdog_and_says_stopping(make_server, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        srv = make_server(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        ready = _messages(sock, "READY=1")[-1].split("\n")
        assert "READY=1" in ready and f"MAINPID={srv.proc.pid}" in ready
        assert f"STATUS=listening on {srv.server}" in ready
        with srv.client():  # READY came after the listener was up
            pass
        assert "WATCHDOG=1" in _messages(sock, "WATCHDOG=1")[-1]
        assert srv.stop() == 0
        assert "STOPPING=1" in _messages(sock, "STOPPING=1")[-1]


def test_no_watchdog_pings_for_another_process(make_server, tmp_path):
    srv = make_server(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    with srv.shell() as shell:
        out, ok = shell.run("ps('sd_watchdog')")
    assert ok and "sd_watchdog" not in out.splitlines()[-1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_unit_file_passes_systemd_analyze_verify():
    unit = os.path.join(ROOT, "ops", "whatsupd.service")
    proc = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "whatsupd.service" not in proc.stderr, proc.stderr
    with open(unit) as f:
        text = f.read()
    for line in ("Type=notify", "WatchdogSec=", "ProtectSystem=strict", "ReadWritePaths=/var/lib/whatsup",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "DynamicUser=yes", "LimitNOFILE="):
        assert line in text


def test_the_license_is_the_one_setup_cfg_declares():
    with open(os.path.join(ROOT, "setup.cfg")) as f:
        assert "license = MIT" in f.read()
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert f.readline().strip() == "MIT License"


def test_json_logs_are_one_object_per_line_with_node_pid_and_user(make_server):
    srv = make_server({"server.log_format": "json", "server.node": "chat@east"})
    srv.register("alice", "bob")
    with srv.client("alice") as alice:
        with pytest.raises(Exception):
            alice.send("bob", "")  # empty_body: a refused frame, logged by alice's session
    srv.stop()
    lines = [json.loads(line) for line in srv.log().splitlines()]
    assert all({"time", "level", "logger", "node", "pid", "message"} <= set(r) for r in lines)
    assert {r["node"] for r in lines} == {"chat@east"} and {r["pid"] for r in lines} == {srv.proc.pid}
    assert any(r["logger"] == "whatsup.node" and "listening on" in r["message"] for r in lines)
    assert any(r.get("user") == "alice" for r in lines)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_cluster_template_unit_passes_systemd_analyze_verify(tmp_path):
    template = tmp_path / "whatsupd@.service"  # verified as an instance of the template beside it
    template.write_text(open(os.path.join(ROOT, "ops", "whatsupd@.service")).read())
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "whatsupd@a.service")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "whatsupd@" not in proc.stderr, proc.stderr
    assert "--config /etc/whatsup/%i.toml" in template.read_text()
