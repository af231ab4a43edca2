"""ops/attack.py at CI size: every attack runs against a real node, the tool prints its table,
and the node's log holds no traceback and none of the passwords the attack used. (Timings are
the tool's verdicts, printed, never asserted here.)"""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "ops"))

from attack import ATTACKS, PASSWORD  # noqa: E402


@pytest.mark.slow
def test_every_attack_runs_and_leaves_no_traceback_and_no_password_in_the_log(tmp_path_factory):
    # a short dir (not the test's long-named tmp_path): the node's Unix sockets must fit in 108 bytes,
    # also under pytest-xdist's per-worker dirs
    workdir = tmp_path_factory.mktemp("attack")
    env = {**os.environ, "TMPDIR": str(workdir)}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "ops", "attack.py"), "-d", "1.0", "-q", "0.2",
                          "--conns", "100", "--members", "20", "--scrypt-n", "1024", "--keep"],
                         capture_output=True, text=True, timeout=110, env=env)
    out = run.stdout
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in ATTACKS]
    assert rows == list(ATTACKS), out + run.stderr
    assert "tracebacks: 0" in out
    assert "MISSED a password" not in out and "bystander failed" not in out, out
    [log] = glob.glob(os.path.join(str(workdir), "whatsup-attack-*", "whatsupd.log"))
    with open(log) as f:
        text = f.read()
    assert "Traceback" not in text and PASSWORD not in text and "pw-guess-guess" not in text
