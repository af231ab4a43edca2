"""The scenarios: each plans its steps (for the progress bar), then runs them, yielding one row per step.

A scenario is a class with ``name``, ``plan(p) -> [step label]`` and
``run(ctx) -> iterator of rows``; SCENARIOS lists them in running order.

A row is a dict: scenario, target, step, ``rate`` (the throughput figure,
msgs/s), optional ``offered``, latency summaries ``e2e`` / ``sent`` /
``delivered`` ({p50, p99, max} in ms) and ``extra`` figures.
"""
import ast
import contextlib
import threading
import time

from .loadgen import GAP
from .targets import Baseline, Workers, cores_busy_seconds, cpu_seconds, rss_kib

FORWARDER, ROUTER, RECEIPTS = "forwarder", "actor_router", "receipt_router"
GAP_MS = GAP * 1000  # the shortest pause between deliveries the load generator reports


def percentiles(parts):
    """Merge the workers' latency samples for one kind: {count, p50, p99, max} in ms."""
    samples = sorted(s for p in parts for s in p["samples"])
    if not samples:
        return None

    def at(q):
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 2)
    return {"count": sum(p["count"] for p in parts), "p50": at(0.50), "p99": at(0.99),
            "max": round(max(p["max"] for p in parts) * 1000, 2)}


def merge_traffic(answers):
    """Sum the workers' counts of one traffic step and merge their latencies."""
    out = {k: sum(a[k] for a in answers) for k in ("sent", "delivered", "delivered_in_time", "backlog",
                                                   "cpu_seconds")}
    out["seconds"] = answers[0]["seconds"]
    series = [a.get("backlog_series", []) for a in answers]
    out["backlog_series"] = [sum(s[i] for s in series) for i in range(min(map(len, series)))]
    out["errors"] = {}
    for a in answers:
        for code, n in a["errors"].items():
            out["errors"][code] = out["errors"].get(code, 0) + n
    out["lat"] = {kind: percentiles([a["lat"][kind] for a in answers]) for kind in ("e2e", "sent", "delivered")}
    out["gaps"] = [g for a in answers for g in a["gaps"]]  # each load generator's receivers' pauses
    return out


def split(items, n):
    return [items[i::n] for i in range(n)]


def log_in(workers, target, names, chunk):
    """Connect and log in ``names`` (no peer), ``chunk`` at a time spread over the load generators."""
    for at in range(0, len(names), chunk):
        workers.call([{"op": "connect", "target": target.name, "address": target.address, "users": users}
                      for users in split([(u, None) for u in names[at:at + chunk]], workers.n)])


class Direct:
    """K pairs exchange 1:1 messages: closed loop on all three servers, then a ladder on whatsup."""
    name = "direct"

    @staticmethod
    def plan(p):
        return ([f"{t} max" for t in (FORWARDER, ROUTER, "whatsup")] +
                [f"whatsup {f:.0%} of max" for f in p["ladder"]])

    @staticmethod
    def run(ctx):
        """All three servers run at once and their peaks are measured in interleaved rounds, best of
        ``max_tries``: a neighbour's burst on a shared machine then hits every target alike."""
        p = ctx.params
        with contextlib.ExitStack() as stack:
            runs = []
            for target in (Baseline(FORWARDER, ctx.placement.server), Baseline(ROUTER, ctx.placement.server),
                           ctx.whatsup()):
                stack.enter_context(target)
                workers = stack.enter_context(Workers(p["load_procs"], ctx.placement.load))
                Direct._connect(workers, target, p)
                runs.append((target, workers))
            peaks = {}
            for _ in range(p["max_tries"]):
                for target, workers in runs:
                    row = Direct._step(workers, target, "max", 0, p, ctx.placement.server)
                    if target.name not in peaks or row["rate"] > peaks[target.name]["rate"]:
                        peaks[target.name] = row
            for target, _ in runs:
                ctx.baseline[target.name] = peaks[target.name]["rate"]
                yield peaks[target.name]
            target, workers = runs[-1]
            for fraction in p["ladder"]:
                rate = max(100, int(peaks[target.name]["rate"] * fraction))
                yield Direct._step(workers, target, f"{fraction:.0%} of max", rate, p, ctx.placement.server)

    @staticmethod
    def _connect(workers, target, p):
        """``pairs`` pairs per load generator, each user sending to the other."""
        workers.call([{"op": "connect", "target": target.name, "address": target.address,
                       "users": [u for i in range(p["pairs"]) for u in ((f"d{w}_{i}a", f"d{w}_{i}b"),
                                                                        (f"d{w}_{i}b", f"d{w}_{i}a"))]}
                      for w in range(workers.n)])

    @staticmethod
    def _step(workers, target, step, rate, p, server_cpus):
        share = rate / workers.n
        cpu, core = cpu_seconds(target.pid), cores_busy_seconds(server_cpus)
        started = time.monotonic()
        t = merge_traffic(workers.call({"op": "traffic", "rate": share, "seconds": p["seconds"],
                                        "window": p["window"] if not rate else p["open_window"]}))
        cpu = cpu_seconds(target.pid) - cpu  # the drain after the step included, like its messages
        elapsed = time.monotonic() - started
        foreign = max(0.0, cores_busy_seconds(server_cpus) - core - cpu) / elapsed / len(server_cpus)
        delivered_rate = t["delivered_in_time"] / t["seconds"]
        sustained = bool(rate) and delivered_rate >= 0.95 * rate and t["backlog"] <= max(100, rate * 0.1)
        extra = {"backlog_at_end": t["backlog"], "sustained": sustained, "messages": t["delivered"],
                 "server_cpu_seconds": round(cpu, 2),
                 "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, t["delivered"]), 1),
                 "server_cpu_util": round(cpu / elapsed, 2),
                 "loadgen_cpu_util": round(t["cpu_seconds"] / elapsed / workers.n, 2),
                 "foreign_cpu_on_server_core": round(foreign, 2)}
        return {"scenario": "direct", "target": target.name, "step": step, "rate": round(delivered_rate),
                "offered": rate or None, **t["lat"], "errors": t["errors"], "extra": extra}


class Offline:
    """Spool M messages to offline users (the ✓ rate is offd's group-committed throughput),
    then time the drain of a full queue to one reconnecting user."""
    name = "offline"

    @staticmethod
    def plan(p):
        return ["whatsup spool", "whatsup drain"]

    @staticmethod
    def run(ctx):
        p = ctx.params
        offline = [f"off{i}" for i in range(p["offline_users"])]
        with ctx.whatsup() as srv, Workers(1, ctx.placement.load) as workers:
            workers.call({"op": "connect", "target": "whatsup", "address": srv.address,
                          "users": [(u, None) for u in [f"s{i}" for i in range(p["senders"])] +
                                    offline + ["drainer"]]})
            workers.call({"op": "close", "users": offline + ["drainer"]})
            time.sleep(0.3)  # let the server see them go
            yield Offline._spool(workers, p, offline)
            yield Offline._drain(workers, srv, p)

    @staticmethod
    def _spool(workers, p, offline):
        (a,) = workers.call({"op": "spool", "to": offline, "count": p["spool"], "window": p["spool_window"]})
        return {"scenario": "offline", "target": "whatsup", "step": f"spool {p['spool']:,} msgs",
                "rate": round(a["lat"]["sent"]["count"] / a["seconds"]), "sent": percentiles([a["lat"]["sent"]]),
                "errors": a["errors"], "extra": {"seconds": round(a["seconds"], 3)}}

    @staticmethod
    def _drain(workers, srv, p):
        workers.call({"op": "spool", "to": ["drainer"], "count": p["drain"], "window": p["spool_window"]})
        (a,) = workers.call({"op": "drain", "address": srv.address, "user": "drainer", "expect": p["drain"]})
        return {"scenario": "offline", "target": "whatsup", "step": f"drain {p['drain']:,} msgs",
                "rate": round(a["delivered"] / a["seconds"]), "errors": {},
                "extra": {"seconds": round(a["seconds"], 3), "complete": a["complete"]}}


class Idle:
    """N idle logged-in connections: server RSS per connection, logins/s and the CPU share the server
    takes over ``idle_seconds`` with all of them idle, whatsup and baseline (b). The full run's
    120 s outlast a device's keepalive period (idle_timeout / 3, 100 s by default), so every
    connection's ping is in the figure.

    Connections log in a batch at a time, so none waits past protocol.login_timeout behind the
    password hashing of thousands of others."""
    name = "idle"

    @staticmethod
    def plan(p):
        return [f"{ROUTER} {p['idle']:,} conns", f"whatsup {p['idle']:,} conns"]

    @staticmethod
    def run(ctx):
        p = ctx.params
        procs = max(1, -(-p["idle"] // p["conns_per_proc"]))
        for target in (Baseline(ROUTER, ctx.placement.server), ctx.whatsup()):
            with target, Workers(procs, ctx.placement.load) as workers:
                time.sleep(0.2)
                before = rss_kib(target.pid)
                users = split([(f"i{i}", None) for i in range(p["idle"])], procs)
                login = 0.0
                for at in range(0, max(map(len, users)), p["conns_per_call"]):
                    answers = workers.call([{"op": "connect", "target": target.name, "address": target.address,
                                             "users": mine[at:at + p["conns_per_call"]]} for mine in users])
                    login += max(a["login_seconds"] for a in answers)
                time.sleep(0.5)
                after = rss_kib(target.pid)
                cpu = cpu_seconds(target.pid)
                time.sleep(p["idle_seconds"])
                cpu = (cpu_seconds(target.pid) - cpu) / p["idle_seconds"]
                yield {"scenario": "idle", "target": target.name, "step": f"{p['idle']:,} conns",
                       "rate": None, "errors": {},
                       "extra": {"rss_kib_per_conn": round((after - before) / p["idle"], 2),
                                 "rss_mib": round(after / 1024, 1), "logins_per_s": round(p["idle"] / login),
                                 "idle_cpu": round(cpu, 4), "idle_cpu_seconds": p["idle_seconds"],
                                 "load_procs": procs}}


class Fanout:
    """One member sends to a group whose other members are all online: first ``fanout_lone``
    messages one at a time (the ✓ latency of a lone message: one fan-out and its fsyncs), then
    ``fanout_msgs`` pipelined: copies delivered/s, the latency of every copy (send -> member),
    ✓ per message and ✓✓ per copy."""
    name = "fanout"

    @staticmethod
    def plan(p):
        return [f"whatsup {g:,} members" for g in p["groups"]]

    @staticmethod
    def run(ctx):
        p = ctx.params
        for size in p["groups"]:
            with ctx.whatsup() as srv, Workers(1, ctx.placement.load) as workers:
                members = [f"g{i}" for i in range(size)]
                for at in range(0, size, p["conns_per_call"]):
                    workers.call({"op": "connect", "target": "whatsup", "address": srv.address,
                                  "users": [(u, None) for u in members[at:at + p["conns_per_call"]]]})
                (a,) = workers.call({"op": "request", "user": members[0],
                                     "frame": {"type": "group_create", "name": "bench", "members": members[1:]}})
                gid = a["answer"]["group"]
                (lone,) = workers.call({"op": "fanout", "sender": members[0], "group": gid,
                                        "count": p["fanout_lone"], "window": 1})
                (a,) = workers.call({"op": "fanout", "sender": members[0], "group": gid,
                                     "count": p["fanout_msgs"], "window": p["fanout_window"]})
                yield {"scenario": "fanout", "target": "whatsup", "step": f"{size:,} members",
                       "rate": round(a["delivered"] / a["seconds"]), "e2e": percentiles([a["lat"]["e2e"]]),
                       "sent": percentiles([a["lat"]["sent"]]), "delivered": percentiles([a["lat"]["delivered"]]),
                       "errors": {**lone["errors"], **a["errors"]},
                       "extra": {"seconds": round(a["seconds"], 3), "complete": a["complete"] and lone["complete"],
                                 "messages": p["fanout_msgs"], "copies": a["copies"],
                                 "lone_sent": percentiles([lone["lat"]["sent"]])}}


class OneStep:
    """A scenario of one step, labelled ``step`` formatted with the parameters."""
    step = ""

    @classmethod
    def plan(cls, p):
        return [cls.step.format(**p)]


class Reload(OneStep):
    """A hot reload of ``whatsup.c2s.session`` through the operator shell (the node's backdoor socket)
    while ``pairs`` pairs exchange 1:1 messages and idle sessions fill the node up to
    ``reload_sessions``: the sessions that disconnected during the step, and the longest pause
    between two deliveries (any receiver) that overlaps the reload."""
    name = "reload"
    step = "whatsup {reload_sessions:,} sessions"
    AFTER = 0.25  # seconds after the reload returned that still count as "around it"

    @staticmethod
    def run(ctx):
        p = ctx.params
        idle = max(0, p["reload_sessions"] - 2 * p["pairs"] * p["load_procs"])
        procs = max(1, -(-idle // p["conns_per_proc"]))
        with ctx.whatsup() as srv, Workers(p["load_procs"], ctx.placement.load) as load, \
                Workers(procs, ctx.placement.load) as idlers:
            Direct._connect(load, srv, p)
            users = split([(f"r{i}", None) for i in range(idle)], procs)
            for at in range(0, max(map(len, users)), p["conns_per_call"]):
                idlers.call([{"op": "connect", "target": "whatsup", "address": srv.address,
                              "users": mine[at:at + p["conns_per_call"]]} for mine in users])
            with srv.server.shell() as sh:
                sessions, gone = ask(sh, "(len(sm), node.counters['disconnections'])")
                traffic = {}
                driver = threading.Thread(target=Reload._drive, args=(load, p, traffic))
                driver.start()
                time.sleep(p["reload_seconds"] / 3)
                started = time.monotonic()
                report, ok = sh.run("reload('whatsup.c2s.session')")
                took = time.monotonic() - started
                driver.join()
                if "error" in traffic:
                    raise traffic["error"]
                if not ok:
                    raise RuntimeError(f"reload failed:\n{report}")
                t = traffic["t"]
                gone = ask(sh, "node.counters['disconnections']") - gone
            around = [length for start, length in t["gaps"]
                      if start <= started + took + Reload.AFTER and start + length >= started]
            extra = {"sessions": sessions, "disconnects": gone, "reload_seconds": round(took, 3),
                     "stall_ms": round(max(around) * 1000, 1) if around else None,
                     "gap_threshold_ms": GAP_MS,
                     "step_max_gap_ms": round(max((g for _, g in t["gaps"]), default=0) * 1000, 1),
                     "messages": t["delivered"], "backlog_at_end": t["backlog"],
                     "report": report.strip()}
            yield {"scenario": "reload", "target": "whatsup", "step": f"{sessions:,} sessions",
                   "rate": round(t["delivered_in_time"] / t["seconds"]), "offered": p["reload_rate"],
                   **t["lat"], "errors": t["errors"], "extra": extra}

    @staticmethod
    def _drive(load, p, into):
        try:
            into["t"] = merge_traffic(load.call({"op": "traffic", "rate": p["reload_rate"] / load.n,
                                                 "seconds": p["reload_seconds"], "window": p["open_window"]}))
        except Exception as exc:  # re-raised by the scenario, after the reload
            into["error"] = exc


class Random:
    """The realistic shape (issue 10): N users logged in, each message from a random user to a random
    other user, open loop at a ladder of offered rates; devices ack each burst (as whatsup.client
    does) and senders read ✓ and ✓✓. The baselines (b) and (c) get the same users and the same
    ladder, so whatsup's highest good rate is also a ratio of the design's ceiling for this shape,
    without (b) and with (c) the acks and receipts whatsup sends.

    A step is *good* when it is sustained (≥ 95 % of the offered rate delivered within the step,
    backlog at its end under 100 ms worth) and the delivery p99 is at most ``p99_ms``; a ladder
    stops at the first step that is not sustained."""
    name = "random"

    @staticmethod
    def plan(p):
        return [f"{t} {n:,} users {r:,}/s" for n in p["users"] for t in (ROUTER, RECEIPTS, "whatsup")
                for r in p["rates"]]

    @staticmethod
    def run(ctx):
        p = ctx.params
        with contextlib.ExitStack() as stack:
            runs = []
            for target in (Baseline(ROUTER, ctx.placement.server), Baseline(RECEIPTS, ctx.placement.server),
                           ctx.whatsup()):
                stack.enter_context(target)
                runs.append((target, stack.enter_context(Workers(p["random_procs"], ctx.placement.load))))
            connected = 0
            for n in p["users"]:
                names = [f"u{i}" for i in range(n)]
                for target, workers in runs:
                    log_in(workers, target, names[connected:], p["conns_per_call"])
                    ctx.progress(f"random: {n:,} users logged in to {target.name}")
                for target, workers in runs:
                    Random._step(ctx, workers, target, n, names, p["rates"][0], p["warmup_seconds"])
                    for rate in p["rates"]:
                        row = Random._step(ctx, workers, target, n, names, rate, p["step_seconds"])
                        yield row
                        if not row["extra"]["sustained"]:
                            ctx.skip(len(p["rates"]) - p["rates"].index(rate) - 1)
                            break
                connected = n

    @staticmethod
    def _step(ctx, workers, target, users, names, rate, seconds):
        ctx.progress(f"random: {target.name}, {users:,} users, {rate:,} msgs/s for {seconds:g} s")
        cpu, core = cpu_seconds(target.pid), cores_busy_seconds(ctx.placement.server)
        started = time.monotonic()
        t = merge_traffic(workers.call({"op": "scatter", "rate": rate / workers.n, "seconds": seconds,
                                        "names": names}))
        cpu = cpu_seconds(target.pid) - cpu  # the drain after the step included, like its messages
        elapsed = time.monotonic() - started
        foreign = max(0.0, cores_busy_seconds(ctx.placement.server) - core - cpu) / elapsed / len(ctx.placement.server)
        delivered_rate = t["delivered_in_time"] / t["seconds"]
        sustained = delivered_rate >= 0.95 * rate and t["backlog"] <= max(100, rate * 0.1)
        good = sustained and t["lat"]["e2e"] is not None and t["lat"]["e2e"]["p99"] <= ctx.params["p99_ms"]
        extra = {"users": users, "backlog_at_end": t["backlog"], "backlog_series": t["backlog_series"],
                 "sustained": sustained, "good": good, "messages": t["delivered"],
                 "server_cpu_seconds": round(cpu, 2),
                 "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, t["delivered"]), 1),
                 "server_cpu_util": round(cpu / elapsed, 2), "server_rss_mib": round(rss_kib(target.pid) / 1024, 1),
                 "loadgen_cpu_util": round(t["cpu_seconds"] / seconds / workers.n, 2),
                 "foreign_cpu_on_server_core": round(foreign, 2),
                 "longest_gap_ms": round(max((g for _, g in t["gaps"]), default=0) * 1000, 1)}
        return {"scenario": "random", "target": target.name, "step": f"{users:,} users {rate:,}/s",
                "rate": round(delivered_rate), "offered": rate, **t["lat"], "errors": t["errors"], "extra": extra}


def ask(sh, expression):
    """The value of ``expression`` in the node, through its operator shell ``sh``."""
    text, ok = sh.run(expression)
    if not ok:
        raise RuntimeError(f"shell: {expression} failed:\n{text}")
    return ast.literal_eval(text.strip())


class Soak(OneStep):
    """whatsup under the realistic shape at one steady rate for ``soak_minutes``: RSS sampled every
    ``soak_sample_seconds`` (flat once queues are steady is the goal) with the dedup windows' bytes
    (read through the shell: they grow by design until every sender has written
    ``session.dedup_window`` ids, hours at these rates), the longest pause between two deliveries
    (any receiver), and how often gevent's monitor saw the hub blocked for longer than
    ``soak_block_ms`` (the tests' hub-blocked gate, at a tighter threshold)."""
    name = "soak"
    step = "whatsup {soak_users:,} users {soak_rate:,}/s {soak_minutes:g} min"

    @staticmethod
    def run(ctx):
        p = ctx.params
        env = {"GEVENT_MAX_BLOCKING_TIME": str(p["soak_block_ms"] / 1000)}
        names = [f"s{i}" for i in range(p["soak_users"])]
        with ctx.whatsup(env) as srv, Workers(p["random_procs"], ctx.placement.load) as workers, \
                srv.server.shell() as sh:
            def windows():
                return ask(sh, "router.dedup.nbytes()") / 2 ** 20

            log_in(workers, srv, names, p["conns_per_call"])
            rss, lat, gaps, errors, sent, delivered = [(0.0, rss_kib(srv.pid), windows())], [], [], {}, 0, 0
            cpu = cpu_seconds(srv.pid)
            started = time.monotonic()
            total = p["soak_minutes"] * 60
            while time.monotonic() - started < total:
                seconds = min(p["soak_sample_seconds"], total - (time.monotonic() - started))
                t = merge_traffic(workers.call({"op": "scatter", "rate": p["soak_rate"] / workers.n,
                                                "seconds": max(0.5, seconds), "names": names}))
                rss.append((round(time.monotonic() - started, 1), rss_kib(srv.pid), windows()))
                lat.append(t["lat"])
                gaps += [g for _, g in t["gaps"]]
                sent, delivered = sent + t["sent"], delivered + t["delivered"]
                for code, n in t["errors"].items():
                    errors[code] = errors.get(code, 0) + n
                ctx.progress(f"soak: {rss[-1][0]:,.0f}/{total:,.0f} s, RSS {rss[-1][1] / 1024:,.1f} MiB, "
                             f"p99 {t['lat']['e2e']['p99'] if t['lat']['e2e'] else '-'} ms")
            cpu = cpu_seconds(srv.pid) - cpu
            blocked = len(srv.server.blocking_reports())
        mib = [k / 1024 for _, k, _ in rss]
        rest = [k / 1024 - w for _, k, w in rss]  # RSS less the windows
        extra = {"users": p["soak_users"], "minutes": p["soak_minutes"], "messages": delivered,
                 "rss_mib": [[at, round(k / 1024, 1)] for at, k, _ in rss],
                 "windows_mib": [[at, round(w, 3)] for at, _, w in rss],
                 "rss_steady_spread": Soak._spread(mib), "rest_steady_spread": Soak._spread(rest),
                 "longest_gap_ms": round(max(gaps, default=0) * 1000, 1), "gap_threshold_ms": GAP_MS,
                 "hub_blocked_reports": blocked, "block_threshold_ms": p["soak_block_ms"],
                 "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, delivered), 1),
                 "step_p99_ms": [x["e2e"]["p99"] if x["e2e"] else None for x in lat]}
        yield {"scenario": "soak", "target": "whatsup", "step": f"{p['soak_users']:,} users {p['soak_rate']:,}/s",
               "rate": round(delivered / max(1e-9, time.monotonic() - started)), "offered": p["soak_rate"],
               "e2e": Soak._worst(lat, "e2e"), "sent": Soak._worst(lat, "sent"),
               "delivered": Soak._worst(lat, "delivered"), "errors": errors, "extra": extra}

    @staticmethod
    def _spread(series):
        """(max - min) / max over the last two thirds of the samples."""
        steady = series[len(series) // 3:] or series
        return round((max(steady) - min(steady)) / max(steady), 3)

    @staticmethod
    def _worst(lats, kind):
        """The soak's summary of one latency: the median of the samples' p50s, the worst p99 and max."""
        parts = [x[kind] for x in lats if x[kind]]
        if not parts:
            return None
        p50s = sorted(x["p50"] for x in parts)
        return {"count": sum(x["count"] for x in parts), "p50": p50s[len(p50s) // 2],
                "p99": max(x["p99"] for x in parts), "max": max(x["max"] for x in parts)}


SCENARIOS = {s.name: s for s in (Random, Direct, Fanout, Offline, Idle, Reload, Soak)}
#: run by default; the soak (30 minutes by default) only when named
DEFAULT = [name for name in SCENARIOS if name != "soak"]

REALISTIC = {
    "full": {"users": [5000, 10_000], "rates": [250, 500, 1000, 2000, 3000, 4000, 5000, 6000, 8000, 11_000,
                                                  14_000, 18_000, 24_000, 32_000],
             "step_seconds": 20.0, "warmup_seconds": 5.0, "p99_ms": 20.0, "random_procs": 1,
             "soak_users": 5000, "soak_rate": 2000, "soak_minutes": 30.0, "soak_sample_seconds": 60.0,
             "soak_block_ms": 20},
    # the test suite's smoke (tests/test_bench_smoke.py): every step once, as short as still measures
    "quick": {"users": [100, 200], "rates": [100, 300], "step_seconds": 0.5, "warmup_seconds": 0.25,
              "p99_ms": 20.0, "random_procs": 1, "soak_users": 100, "soak_rate": 200, "soak_minutes": 0.05,
              "soak_sample_seconds": 1.0, "soak_block_ms": 20},
}

PARAMS = {
    "full": {**REALISTIC["full"], "pairs": 50, "load_procs": 1, "max_tries": 3, "seconds": 3.0, "window": 20, "open_window": 200,
             "ladder": [0.25, 0.5, 0.75, 0.9, 1.0, 1.1], "offline_users": 100, "senders": 20,
             "spool": 100_000, "spool_window": 200, "drain": 10_000, "idle": 10_000, "idle_seconds": 120.0, "conns_per_proc": 5000,
             "groups": [256, 1024], "fanout_msgs": 200, "fanout_window": 50, "fanout_lone": 10,
             "conns_per_call": 1000, "reload_sessions": 5000, "reload_rate": 5000, "reload_seconds": 4.0},
    "quick": {**REALISTIC["quick"], "pairs": 10, "load_procs": 1, "max_tries": 1, "seconds": 0.5, "window": 20, "open_window": 200,
              "ladder": [0.5], "offline_users": 10, "senders": 5, "spool": 2000, "spool_window": 100,
              "drain": 1000, "idle": 200, "idle_seconds": 0.5, "conns_per_proc": 200,
              "groups": [64], "fanout_msgs": 20, "fanout_window": 10, "fanout_lone": 3,
              "conns_per_call": 200, "reload_sessions": 200, "reload_rate": 1000, "reload_seconds": 1.0},
}
