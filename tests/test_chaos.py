"""The CI-sized chaos run: ops/chaos.py against a real node, killed -9 a few times, every user
with three devices (a primary and two companions that go offline for a while after a drop)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the tallies that fail a run (ops/chaos.py's FAILURES), and the node's tracebacks
FAILURES = ("lost", "duplicates", "out_of_order", "receipts_missing", "corrupted", "unacked",
            "delivered_without_ack", "device_crashes", "server_tracebacks")


def chaos(tmp_path, *args, duration, timeout):
    """Run ops/chaos.py with ``args`` (``duration`` s of traffic, drops, 40 s to settle); its tally and run."""
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "ops", "chaos.py"), *args, "--duration", str(duration),
         "--drop-rate", "0.5", "--settle", "40", "--dir", str(tmp_path / "chaos"), "--json"],
        capture_output=True, text=True, timeout=timeout)
    return json.loads(run.stdout.strip().splitlines()[-1]), run


def failed(tally, run):
    """What a failed run shows: the failing counts (the tally is too long for pytest's message),
    the examples the audit kept, the end of stderr."""
    bad = {k: v for k, v in tally.items() if v and k in FAILURES}
    return bad, tally.get("examples"), run.stderr[-3000:]


@pytest.mark.slow
def test_every_acked_message_reaches_every_device_once_in_order_with_its_receipt_through_kill_9(tmp_path):
    tally, run = chaos(tmp_path, "--users", "5", "--devices", "3", "--kills", "3", "--rate", "15", "--seed", "7",
                       duration=8, timeout=100)
    assert run.returncode == 0, failed(tally, run)
    assert tally["kills"] == 3 and tally["drops"] > 0
    assert tally["acked"] == tally["sent"] > 100
    assert tally["delivered"] >= 5 * tally["acked"]  # 3 devices of the recipient, 2 others of the sender
    assert tally["lost"] == tally["duplicates"] == tally["out_of_order"] == tally["receipts_missing"] == 0


@pytest.mark.slow
def test_across_three_nodes_every_acked_message_survives_kill_9_of_nodes_and_of_redis(tmp_path):
    """ops/chaos.py --nodes 3: clients on random nodes, kill -9 of random nodes and of Redis."""
    tally, run = chaos(tmp_path, "--nodes", "3", "--users", "6", "--kills", "4", "--rate", "10", "--seed", "11",
                       duration=12, timeout=110)
    assert run.returncode == 0, failed(tally, run)
    assert tally["kills"] == 4 and tally["redis_kills"] == 2
    assert tally["acked"] == tally["sent"] > 50
    assert tally["lost"] == tally["duplicates"] == tally["out_of_order"] == tally["receipts_missing"] == 0
