"""ops/offd_figures.py at toy sizes: each figure completes and prints its lines (its stand-ins for
the router's collaborators kept up with the router). Completion only: no figure is asserted."""
import subprocess
import sys

import pytest

from ops.bench.targets import ROOT


@pytest.mark.timeout(120)
@pytest.mark.parametrize("figure, args, lines", [
    ("stall", ["--users", "40", "--per-user", "6"], ["young spool", "restart", "after restart"]),
    ("dedup", ["--senders", "20", "--ids", "64"], ["per sender"]),
])
def test_a_figure_runs_at_toy_sizes(figure, args, lines):
    run = subprocess.run([sys.executable, "-m", "ops.offd_figures", figure, *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for line in lines:
        assert line in run.stdout, run.stdout
