"""What a run records: the machine, the versions, the table for humans and the sanity checks."""
import os
import platform
import subprocess
import sys
from importlib import metadata

import whatsup

from .targets import ROOT

BASE, SAME_WORK = "actor_router", "receipt_router"  # baselines (b) and (c)


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {"cpu": model, "cpus": os.cpu_count(), "usable_cpus": sorted(os.sched_getaffinity(0)),
            "mem_gib": round(mem_kib / 2 ** 20, 1), "kernel": platform.release(), "platform": platform.platform()}


def versions():
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    out = {"python": sys.version.split()[0], "whatsup": whatsup.__version__, "whatsup_commit": commit or None}
    for dist in ("gevent", "greenlet", "msgpack", "sqlitedict", "click"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def add_ratios(rows, baseline):
    """Every throughput figure as a fraction of baseline (b)'s: a realistic (``random``) step of
    (b)'s same step, the others of (b)'s closed-loop direct rate."""
    base = baseline.get(BASE)
    same = {r["step"]: r["rate"] for r in rows if r["scenario"] == "random" and r["target"] == BASE}
    for row in rows:
        ref = same.get(row["step"]) if row["scenario"] == "random" else base
        row["ratio_b"] = round(row["rate"] / ref, 3) if ref and row.get("rate") is not None else None
    idle = {r["target"]: r["extra"]["rss_kib_per_conn"] for r in rows if r["scenario"] == "idle"}
    for row in rows:
        if row["scenario"] == "idle" and idle.get(BASE):
            row["extra"]["rss_ratio_b"] = round(row["extra"]["rss_kib_per_conn"] / idle[BASE], 2)


def _lat(summary):
    return "-" if not summary else f"{summary['p50']:g}/{summary['p99']:g}/{summary['max']:g}"


def _notes(row):
    x = row.get("extra", {})
    if row["scenario"] == "random":
        verdict = ("good" if x["good"] else "sustained" if x["sustained"]
                   else f"NOT sustained (backlog {x['backlog_at_end']:,})")
        return (f"{x['server_cpu_us_per_msg']:g} µs CPU/msg; cpu server {x['server_cpu_util']:.0%} "
                f"loadgen {x['loadgen_cpu_util']:.0%} others-on-server-core {x['foreign_cpu_on_server_core']:.0%}; "
                f"RSS {x['server_rss_mib']:g} MiB; {verdict}")
    if row["scenario"] == "soak":
        rss, win = x["rss_mib"], x["windows_mib"]
        return (f"{x['minutes']:g} min: RSS {rss[0][1]:g} → {rss[-1][1]:g} MiB (steady spread "
                f"{x['rss_steady_spread']:.0%}), of which dedup windows {win[0][1]:.1f} → {win[-1][1]:.1f} MiB "
                f"(the rest's steady spread {x['rest_steady_spread']:.0%}), "
                f"longest delivery pause {x['longest_gap_ms']:g} ms, "
                f"hub blocked > {x['block_threshold_ms']} ms: {x['hub_blocked_reports']}×, "
                f"{x['server_cpu_us_per_msg']:g} µs CPU/msg")
    if row["scenario"] == "direct":
        cpu = (f"{x['server_cpu_us_per_msg']:g} µs CPU/msg; cpu server {x['server_cpu_util']:.0%} "
               f"loadgen {x['loadgen_cpu_util']:.0%} others-on-server-core {x['foreign_cpu_on_server_core']:.0%}")
        if row["offered"] is None:
            return f"closed loop, {cpu}"
        return f"{cpu}, " + ("sustained" if x["sustained"] else f"NOT sustained (backlog {x['backlog_at_end']})")
    if row["scenario"] == "idle":
        ratio = f" ({x['rss_ratio_b']:g}x b)" if "rss_ratio_b" in x else ""
        return (f"{x['rss_kib_per_conn']:g} KiB/conn{ratio}, {x['logins_per_s']:,} logins/s, "
                f"idle CPU {x['idle_cpu']:.1%} (over {x['idle_cpu_seconds']:g} s)")
    if row["scenario"] == "reload":
        stall = (f"{x['stall_ms']:g} ms" if x["stall_ms"] is not None else f"none over {x['gap_threshold_ms']:g} ms")
        return (f"{x['disconnects']} disconnects, longest stall around the reload {stall} "
                f"(longest in the step {x['step_max_gap_ms']:g} ms), reload took {x['reload_seconds']:g} s, "
                f"{row['offered']:,} msgs/s offered")
    copies = f"{x['copies']:,} copies (msgs/s counts copies) in " if "copies" in x else ""
    lone = f"; ✓ of a lone message {_lat(x['lone_sent'])} ms" if x.get("lone_sent") else ""
    return f"{copies}{x['seconds']:g} s{lone}" + ("" if x.get("complete", True) else " INCOMPLETE")


COLUMNS = ("scenario", "target", "step", "msgs/s", "x (b)", "e2e ms p50/p99/max", "✓ ms p50/p99/max",
           "✓✓ ms p50/p99/max", "notes")


def table_rows(rows):
    for r in rows:
        yield (r["scenario"], r["target"], r["step"], "-" if r.get("rate") is None else f"{r['rate']:,}",
               "-" if r.get("ratio_b") is None else f"{r['ratio_b']:.2f}", _lat(r.get("e2e")),
               _lat(r.get("sent")), _lat(r.get("delivered")), _notes(r))


def table(rows, markdown=False):
    cells = [COLUMNS] + list(table_rows(rows))
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "---|" * len(COLUMNS))
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in cells)


def highest_sustained(rows):
    ok = [r["offered"] for r in rows if r["scenario"] == "direct" and r.get("offered")
          and r["extra"]["sustained"]]
    return max(ok, default=None)


def highest_good(rows, p99_ms):
    """The realistic scenario's answer per (target, users): the highest offered rate whose step
    was good (sustained, delivery p99 <= ``p99_ms``), with the others' as ratios of (b)'s and (c)'s."""
    out = {}
    for r in rows:
        if r["scenario"] == "random":
            key = f"{r['target']} {r['extra']['users']}"
            best = out.setdefault(key, {"target": r["target"], "users": r["extra"]["users"], "rate": None})
            if r["extra"]["good"] and (best["rate"] or 0) < r["offered"]:
                best.update(rate=r["offered"], p99=r["e2e"]["p99"],
                            cpu_us_per_msg=r["extra"]["server_cpu_us_per_msg"])
    for best in out.values():
        for key, name, exempt in (("ratio_b", BASE, {BASE}), ("ratio_c", SAME_WORK, {BASE, SAME_WORK})):
            base = out.get(f"{name} {best['users']}", {}).get("rate")
            best[key] = round(best["rate"] / base, 3) if best["rate"] and base and best["target"] not in exempt else None
    return out


def answer_lines(answers, p99_ms):
    for a in answers.values():
        rate = f"{a['rate']:,} msgs/s (p99 {a['p99']:g} ms)" if a["rate"] else "none"
        ratio = "".join(f", {a[key]:.2f}x ({name})" for key, name in (("ratio_b", "b"), ("ratio_c", "c"))
                        if a.get(key))
        yield (f"random ({a['users']:,} users): {a['target']}: highest rate with p99 <= {p99_ms:g} ms "
               f"and no growing backlog: {rate}{ratio}")


def insane(rows, scenarios):
    """Why the figures of a run are not sane (empty when they are): the --quick smoke's check."""
    problems = [f"scenario {s} produced no rows" for s in scenarios
                if not any(r["scenario"] == s for r in rows)]
    for r in rows:
        where = f"{r['scenario']}/{r['target']}/{r['step']}"
        if r.get("errors"):
            problems.append(f"{where}: error frames {r['errors']}")
        # delivered at all, not "in time": a loaded machine may deliver late (not a smoke failure)
        if r.get("rate") is not None and not r.get("extra", {}).get("messages", r["rate"]):
            problems.append(f"{where}: nothing delivered")
        for kind in ("e2e", "sent", "delivered"):
            lat = r.get(kind)
            if lat and not 0 <= lat["p50"] <= lat["p99"] <= lat["max"]:
                problems.append(f"{where}: {kind} latency out of order {lat}")
        if r["scenario"] in ("direct", "random", "soak") and r["target"] in ("whatsup", SAME_WORK) and not (
                r["e2e"] and r["sent"] and r["delivered"]):
            problems.append(f"{where}: missing e2e, ✓ or ✓✓ latencies")
        if r.get("extra", {}).get("complete") is False:
            problems.append(f"{where}: incomplete")
        if r["scenario"] == "reload" and not (r["e2e"] and r["extra"]["sessions"] > 0):
            problems.append(f"{where}: no deliveries or no sessions around the reload")
        if r["scenario"] == "idle" and not 0 < r["extra"]["rss_kib_per_conn"] < 1024:
            problems.append(f"{where}: implausible RSS per connection {r['extra']['rss_kib_per_conn']}")
    return problems
