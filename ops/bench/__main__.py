"""``python3 -m ops.bench run [--quick] [--scenario NAME ...] [--out results.json] [--markdown]``

Runs whatsup side by side with two baselines — (a) a raw frame forwarder and
(b) a minimal actor router — driven by the same load generator processes,
prints a table (every whatsup throughput also as a ratio to (b)) and writes a
JSON file with the machine, the versions, the configuration and every figure.
``--quick`` is a smoke run (well under a minute) that fails unless every
scenario completes with sane figures.
"""
import datetime
import json
import signal
import sys

import click

from whatsup.testing import FAST

from . import report
from .scenarios import PARAMS, SCENARIOS
from .targets import Placement, Whatsup

#: the whatsupd configuration benchmarked: the defaults (✓ only after the fsync) with the tests'
#: cheaper password hashing, so that logging in 10,000 users measures the server, not scrypt; and
#: since a few connections from 127.0.0.1 stand in for many devices, limits per address and a
#: per-connection message rate that never binds (the token bucket still runs on every msg)
SERVER_SETTINGS = {**FAST, "server.max_connections_per_ip": 50_000, "auth.ip_failures": 0,
                   "server.unauthenticated_per_ip": 50_000, "server.unauthenticated_per_prefix": 50_000,
                   "auth.checks_per_ip": 50_000, "auth.checks_per_prefix": 50_000,
                   "auth.max_waiting": 50_000, "ratelimit.msg": 1e6}


class Context:
    def __init__(self, params, placement):
        self.params, self.placement = params, placement
        self.baseline = {}  # target -> closed-loop direct msgs/s

    def whatsup(self):
        return Whatsup(self.placement.server, SERVER_SETTINGS)


@click.group()
def main():
    """whatsup benchmarks."""


@main.command()
@click.option("--quick", is_flag=True, help="smoke run: small sizes, short steps, sanity checks")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(list(SCENARIOS)),
              help="run only these (repeatable); default: all")
@click.option("--out", type=click.Path(dir_okay=False), default="bench-results.json", show_default=True,
              help="where the JSON record goes")
@click.option("--markdown", is_flag=True, help="print the table as Markdown (as in README.md)")
def run(quick, scenarios, out, markdown):
    """Run the scenarios against whatsup and the baselines; print the table, write the JSON."""
    # SIGTERM unwinds like Ctrl-C, so the servers and load generators started so far are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenarios = list(scenarios) or list(SCENARIOS)
    if "direct" not in scenarios:
        click.echo("note: without the direct scenario there is no baseline (b) rate for ratios")
    params = PARAMS["quick" if quick else "full"]
    placement = Placement()
    ctx = Context(params, placement)
    click.echo(f"placement: {placement}")
    plan = [f"{name}: {step}" for name in scenarios for step in SCENARIOS[name].plan(params)]
    rows = []
    started = datetime.datetime.now(datetime.timezone.utc)
    with click.progressbar(length=len(plan), label="benchmark", show_pos=True,
                           item_show_func=lambda i: plan[i] if i is not None and i < len(plan) else None) as bar:
        for name in scenarios:
            for row in SCENARIOS[name].run(ctx):
                rows.append(row)
                bar.update(1, len(rows))
    report.add_ratios(rows, ctx.baseline)
    click.echo(report.table(rows, markdown))
    best = report.highest_sustained(rows)
    if best:
        click.echo(f"direct: highest sustained rate {best:,} msgs/s")
    record = {"started": started.isoformat(), "quick": quick, "command": " ".join(sys.argv),
              "machine": report.machine(), "versions": report.versions(), "placement": placement.as_dict(),
              "server_settings": SERVER_SETTINGS, "params": params, "scenarios": scenarios,
              "baseline_rates": ctx.baseline, "highest_sustained_direct": best, "rows": rows}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    click.echo(f"wrote {out}")
    problems = report.insane(rows, scenarios)
    if problems:
        raise click.ClickException("figures are not sane:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
