"""The benchmark's --quick smoke: every scenario completes against real servers with sane figures.

Sizes and speeds are not asserted (tests never assert timings); ops/bench's own
sanity check (ops.bench.report.insane) fails the run on missing or absurd figures.
"""
import json
import subprocess
import sys

import pytest

from ops.bench.scenarios import SCENARIOS
from ops.bench.targets import ROOT


@pytest.mark.slow
@pytest.mark.timeout(110)
def test_quick_benchmark_runs_every_scenario_and_writes_the_record(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "ops.bench", "run", "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "placement:" in run.stdout and "x (b)" in run.stdout
    record = json.loads(out.read_text())
    assert {r["scenario"] for r in record["rows"]} == set(SCENARIOS)
    assert {"machine", "versions", "server_settings", "params", "placement"} <= set(record)
    targets = {r["target"] for r in record["rows"] if r["scenario"] == "direct"}
    assert targets == {"forwarder", "actor_router", "whatsup"}
    assert all(r["ratio_b"] is not None for r in record["rows"] if r.get("rate") is not None)
