"""``python3 -m ops.bench run [--quick] [--scenario NAME ...] [--users N ...] [--step-seconds S] ...``

Runs whatsup side by side with two baselines — (a) a raw frame forwarder and
(b) a minimal actor router — driven by the same load generator processes,
prints a table (throughputs also as a ratio to (b)), the realistic scenario's
answer ("highest rate with p99 ≤ 20 ms and no growing backlog", whatsup and
(b)), and writes a JSON file with the machine, the versions, the configuration
and every figure. Progress goes to the terminal as a bar, or as a line per step
and per soak sample when it is not a terminal. ``--quick`` is a
smoke run that fails unless every scenario completes with sane figures.
"""
import datetime
import json
import signal
import sys

import click

from whatsup.cli.progress import Progress

from . import report
from .cluster import cluster
from .scenarios import DEFAULT, PARAMS, SCENARIOS
from .targets import SERVER_SETTINGS, Placement, Whatsup

class Steps:
    """The plan's progress through whatsup.cli.progress (a bar on a terminal, lines otherwise),
    with the step in hand (or a soak sample) as its label."""

    def __init__(self, plan):
        self.plan, self.done = plan, 0
        self.bar = Progress(sys.stdout, every=0.0)  # off a terminal: a line per note (a few a minute)

    def step(self, n=1):
        """``n`` planned steps are done (or skipped)."""
        self.done = min(len(self.plan), self.done + n)
        self.note(self.plan[self.done] if self.done < len(self.plan) else "report")

    def note(self, text):
        self.bar.step(f"benchmark: {text}", self.done, len(self.plan))


class Context:
    def __init__(self, params, placement, progress):
        self.params, self.placement = params, placement
        self.baseline = {}  # target -> closed-loop direct msgs/s
        self.progress, self.skip = progress.note, progress.step

    def whatsup(self, env=None):
        return Whatsup(self.placement.server, SERVER_SETTINGS, env)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """whatsup benchmarks (`run -h` for the options)."""


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="smoke run: small sizes, short steps, sanity checks")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(list(SCENARIOS)),
              help=f"run only these (repeatable); default: all but soak ({', '.join(DEFAULT)})")
@click.option("--users", multiple=True, type=click.IntRange(2), help="random: users logged in, in order "
              "(repeatable; the next count adds users to the same servers) [default: 5000, 10000]")
@click.option("--rates", help="random: the ladder of offered msgs/s, comma-separated [default: 250 .. 32000]")
@click.option("--step-seconds", type=click.FloatRange(0.5), help="random: seconds per step [default: 20]")
@click.option("--soak-minutes", type=click.FloatRange(0.05), help="soak: duration [default: 30]")
@click.option("--soak-rate", type=click.IntRange(1), help="soak: offered msgs/s [default: 2000]")
@click.option("--out", type=click.Path(dir_okay=False), default="bench-results.json", show_default=True,
              help="where the JSON record goes")
@click.option("--markdown", is_flag=True, help="print the table as Markdown (as in README.md)")
def run(quick, scenarios, users, rates, step_seconds, soak_minutes, soak_rate, out, markdown):
    """Run the scenarios against whatsup and the baselines; print the table, write the JSON."""
    # SIGTERM unwinds like Ctrl-C, so the servers and load generators started so far are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenarios = list(scenarios) or DEFAULT
    if "direct" not in scenarios:
        click.echo("note: without the direct scenario there is no closed-loop (b) rate for ratios")
    params = dict(PARAMS["quick" if quick else "full"])
    overrides = {"users": sorted(users) or None, "step_seconds": step_seconds, "soak_minutes": soak_minutes,
                 "soak_rate": soak_rate, "rates": rates and [int(r) for r in rates.split(",")]}
    params.update({k: v for k, v in overrides.items() if v})
    placement = Placement()
    click.echo(f"placement: {placement}")
    plan = [f"{name}: {step}" for name in scenarios for step in SCENARIOS[name].plan(params)]
    rows = []
    started = datetime.datetime.now(datetime.timezone.utc)
    progress = Steps(plan)
    ctx = Context(params, placement, progress)
    failed = None
    try:
        for name in scenarios:
            for row in SCENARIOS[name].run(ctx):
                rows.append(row)
                progress.step()
    except Exception as exc:  # the rows so far are still reported and recorded, then it fails
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        progress.bar.close()
    report.add_ratios(rows, ctx.baseline)
    click.echo(report.table(rows, markdown))
    best = report.highest_sustained(rows)
    if best:
        click.echo(f"direct (best case, fixed pairs): highest sustained rate {best:,} msgs/s")
    answers = report.highest_good(rows, params["p99_ms"])
    for line in report.answer_lines(answers, params["p99_ms"]):
        click.echo(line)
    record = {"started": started.isoformat(), "quick": quick, "command": " ".join(sys.argv),
              "machine": report.machine(), "versions": report.versions(), "placement": placement.as_dict(),
              "server_settings": SERVER_SETTINGS, "params": params, "scenarios": scenarios,
              "baseline_rates": ctx.baseline, "highest_sustained_direct": best,
              "highest_good_random": answers, "rows": rows, "failed": failed}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    click.echo(f"wrote {out}")
    if failed:
        raise click.ClickException(f"the run stopped early: {failed}")
    problems = report.insane(rows, scenarios)
    if problems:
        raise click.ClickException("figures are not sane:\n  " + "\n  ".join(problems))


main.add_command(cluster)  # 1 node vs N nodes through Redis (ops/bench/cluster.py)

if __name__ == "__main__":
    main()
