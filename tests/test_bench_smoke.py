"""The benchmark's --quick smoke: every scenario completes against real servers with sane figures.

Completion and sanity only: no figure that depends on how busy the machine is
(a rate, a latency, whether a ladder step was sustained) is asserted, so a
loaded machine cannot fail it; ops/bench's own check (ops.bench.report.insane)
fails the run on missing or absurd figures (nothing delivered at all, error
frames, latencies out of order).
"""
import json
import subprocess
import sys

import pytest

from ops.bench.scenarios import SCENARIOS
from ops.bench.targets import ROOT


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_quick_benchmark_runs_every_scenario_and_writes_the_record(tmp_path):
    out = tmp_path / "bench.json"
    scenarios = [arg for name in SCENARIOS for arg in ("--scenario", name)]
    run = subprocess.run([sys.executable, "-m", "ops.bench", "run", "--quick", "--out", str(out), *scenarios],
                         cwd=ROOT, capture_output=True, text=True, timeout=160)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "placement:" in run.stdout and "x (b)" in run.stdout
    assert "highest rate with p99" in run.stdout  # the realistic scenario's answer is printed
    assert "benchmark: " in run.stdout  # not a terminal: progress comes as lines
    record = json.loads(out.read_text())
    assert {r["scenario"] for r in record["rows"]} == set(SCENARIOS)
    assert {"machine", "versions", "server_settings", "params", "placement"} <= set(record)
    assert {r["target"] for r in record["rows"] if r["scenario"] == "direct"} == {
        "forwarder", "actor_router", "whatsup"}
    assert {r["target"] for r in record["rows"] if r["scenario"] == "random"} == {
        "actor_router", "receipt_router", "whatsup"}
    same_work = [r for r in record["rows"] if r["scenario"] == "random" and r["target"] == "receipt_router"]
    assert all(r["sent"]["max"] > 0 and r["delivered"]["max"] > 0 for r in same_work)  # (c) sends ✓ and ✓✓
    soak = next(r for r in record["rows"] if r["scenario"] == "soak")
    assert len(soak["extra"]["rss_mib"]) >= 2 and soak["extra"]["messages"] > 0
    assert len(soak["extra"]["windows_mib"]) == len(soak["extra"]["rss_mib"])
    assert soak["extra"]["windows_mib"][-1][1] > 0  # the senders' windows, read through the shell


def test_bench_help_works_with_dash_h():
    for args in ([], ["run"]):
        run = subprocess.run([sys.executable, "-m", "ops.bench", *args, "-h"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "Usage:" in run.stdout, run.stderr
