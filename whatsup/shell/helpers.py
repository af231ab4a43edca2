"""What the operator types in the shell: a few verbs over the node's process table.

Every helper takes a pid as a :class:`~whatsup.runtime.Pid`, an int (``12``),
the text the shell prints (``"<whatsup@localhost.12>"``), a registered name,
or an online user's name (``"alice"``: that user's session). Helpers that
change a process do it the safe way: inside the process, right after the
message in hand and ahead of any backlog (``update``, ``suspend``, a reload's
swap), or from the shell's greenlet without yielding (``drain``). ``h()``
lists them all; ``help(ps)`` shows one.
"""
import inspect
import itertools
import logging
import os
import pydoc
import re
import resource
import sys
import time
import traceback

import gevent
from gevent.event import Event

from .. import __version__
from ..observe import metrics
from ..observe.logs import redact
from ..runtime import CallTimeout, Pid, Process, ProcessDead, Task
from ..runtime.process import CALL, SYS, strays
from . import ERROR_MARK, Table, drain as draining, reload as reloading

log = logging.getLogger("whatsup.shell")
PID_TEXT = re.compile(r"<?(?:(?P<node>[^<>]+)\.)?(?P<n>\d+)>?")
COLUMNS = ("pid", "kind", "who", "entity", "mailbox", "handled", "restarts", "uptime", "vsn")


class Block(dict):
    """A dict that prints as an aligned key/value block in the shell (nested dicts indented under
    their key) and stays a dict in code: ``i(pid)["state"]``, ``sorted(stats())``."""

    def __repr__(self):
        return "\n".join(_block_lines(self, ""))


def _block_lines(values, indent):
    width = max((len(str(k)) for k in values), default=0)
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield f"{indent}{key}"
            yield from _block_lines(value, indent + "  ")
        else:
            yield f"{indent}{str(key).ljust(width)}  {_shown(value)}".rstrip()


def _shown(value):
    """A block's value for people: text unquoted, floats to the millisecond, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, str) and value:
        return value
    if isinstance(value, float):
        return repr(round(value, 3))
    return repr(value)


NODE_COLUMNS = ("node", "epoch", "lease_left", "up", "connections", "online", "mailboxes", "inbox", "outbox",
                "error")


class Shown(str):
    """Text from another node (a table, a block) that prints as itself in the shell."""

    def __repr__(self):
        return str(self)


def _plain(value):
    """True when ``value`` crosses the wire as it is (msgpack: no objects but pids)."""
    if isinstance(value, (str, int, float, bool, bytes, type(None), Pid)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


class Refused:
    """What reload() returns when it changed nothing: it shows as its message (no traceback of the
    shell's own frames), is false, and makes ``whatsup-shell -c`` / ``--reload`` exit 1."""

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return self.message

    def __bool__(self):
        return False


ROLLOUT_COLUMNS = ("node", "outcome", "swapped", "migrated", "gone", "kept_old", "detail")


class Rollout(Table):
    """A rolling reload's outcome per node; false (and ``whatsup-shell -c`` exits 1) unless every
    node reloaded with no process keeping the old code."""

    def __bool__(self):
        return all(row["outcome"] == "reloaded" for row in self)


def _rolled(node, outcome):
    """One node's row of a Rollout."""
    if isinstance(outcome, Refused):
        return {"node": node, "outcome": "refused", "detail": outcome.message.splitlines()[0]}
    kept = len(outcome["failed"])
    return {"node": node, "outcome": "reloaded" if not kept else "kept old code", "swapped": outcome["swapped"],
            "migrated": outcome["migrated"], "gone": outcome["gone"], "kept_old": kept,
            "detail": "; ".join(f"{pid}: {why}" for pid, why in outcome["failed"].items()) or None}


#: stats() figures whose cluster total is the highest node's, not the sum
HIGHEST = ("uptime", "p50", "p90", "p99", "max")


def _total(blocks, key=None):
    """The cluster's figures from the nodes' stats(): numbers summed (HIGHEST: the max), dicts key by
    key; text and the per-node ``metrics`` left out (a scrape of each node has them)."""
    dicts = [b for b in blocks if isinstance(b, dict)]
    if dicts:
        keys = dict.fromkeys(k for d in dicts for k in d if k != "metrics")
        merged = {k: _total([d[k] for d in dicts if k in d], k) for k in keys}
        return Block({k: v for k, v in merged.items() if v is not None})
    numbers = [b for b in blocks if isinstance(b, (int, float)) and not isinstance(b, bool)]
    if not numbers:
        return None
    return max(numbers) if key in HIGHEST else round(sum(numbers), 3)


def _packed(answer):
    """A helper's answer as plain data for the wire (whatsup/cluster/wire.py); _unpacked makes it
    the same type again on the asking node, so a remote answer prints and indexes as a local one."""
    if isinstance(answer, Table):
        return ["table", list(answer.columns), [dict(row) for row in answer], type(answer) is Rollout]
    if isinstance(answer, reloading.ReloadReport):
        return ["reload", {**answer, "failed": {repr(pid): why for pid, why in answer["failed"].items()}}]
    if isinstance(answer, Refused):
        return ["refused", answer.message]
    if isinstance(answer, Block):
        return ["block", dict(answer)]
    return ["value", answer if _plain(answer) else repr(answer)]


def _unpacked(answer):
    tag, value, *rest = answer
    if tag == "table":
        return (Rollout if rest[1] else Table)(rest[0], tuple(value))
    if tag == "reload":
        return reloading.ReloadReport(value)
    if tag == "refused":
        return Refused(value)
    if tag == "block":
        return Block(value)
    return Shown(value) if isinstance(value, str) else value


def brief(msg):
    """A mailbox message as the shell shows it: payload bytes by size, secrets hidden, call/system tags named."""
    if type(msg) is not tuple or not msg:
        return msg
    if msg[0] == CALL:
        return (CALL, redact(msg[2]))
    if msg[0] == SYS:
        return (SYS, getattr(msg[1], "__qualname__", repr(msg[1])))
    return redact(msg)


def percentile(values, p):
    """Nearest-rank percentile of sorted ``values`` (0 when empty)."""
    if not values:
        return 0
    return values[min(len(values) - 1, max(0, -(-len(values) * p // 100) - 1))]


class Helpers:
    """The shell's verbs, bound to one node; :meth:`namespace` is what a shell session sees."""

    VERBS = ("h", "ps", "top", "i", "state", "mailbox", "update", "suspend", "resume", "drain",
             "kill", "where", "stats", "reload", "strays", "unlink", "nodes", "rpc")
    #: What rpc() may run on another node (answers that travel: the text of tables, plain data).
    REMOTE = ("ps", "top", "i", "mailbox", "where", "stats", "reload", "strays", "nodes")

    def __init__(self, node):
        self.node = node
        self._held = {}  # pid -> Event releasing a suspended process

    def namespace(self):
        node = self.node
        ns = {name: getattr(self, name) for name in self.VERBS}
        ns.update(node=node, table=node.table, sm=node.sm, router=node.router, offd=node.offd, devices=node.devices,
                  cfg=node.cfg, Pid=Pid, gevent=gevent, _c=self._c, help=self.help)
        return ns

    def banner(self):
        return (f"whatsup {__version__} operator shell on {self.node.table.node} (os pid {os.getpid()}).\n"
                f"This is arbitrary code execution inside the live node. h() lists the helpers; "
                f"Ctrl-D leaves, the node keeps running.")

    # --- looking -----------------------------------------------------------------

    def h(self):
        """List the helpers with their one-line docs."""
        for name in self.VERBS:
            fn = getattr(self, name)
            doc = (fn.__doc__ or "").strip().splitlines()[0]
            print(f"  {name + str(inspect.signature(fn)):<34} {doc}")

    def unlink(self, user, device):
        """Unlink companion ``device`` of ``user``: token revoked, session closed, its items released."""
        return self.node.devices.unlink_device(user, device, "unlinked by the operator")

    def help(self, thing=None):
        """``help()`` lists the helpers, as ``h()``; ``help(x)`` shows x's documentation. (pydoc's
        interactive help would wait for a line from the node's own stdin: the shell would hang.)"""
        if thing is None:
            return self.h()
        return pydoc.help(thing)

    def ps(self, kind=None, sort="pid", n=None, node=None):
        """Processes as a table (pid, kind, who, entity, mailbox, handled, restarts, uptime, vsn).

        ``kind`` filters ("session"...); ``sort`` is a column, "-column" for descending; ``n`` limits;
        ``node`` another node of the cluster: its table, the same columns; "all": every node's in one.
        """
        if node != "all" and self._other(node):
            return self._remote(node, "ps", kind, sort, n)
        key = sort.lstrip("-")
        if key not in COLUMNS:
            raise ValueError(f"sort by one of {COLUMNS}")
        if node == "all":
            rows = [row for table in self._everywhere("ps", kind).values() if isinstance(table, Table) for row in table]
        else:
            rows = [self._row(p) for p in self.node.table.processes(kind)]
        rows.sort(key=lambda r: _sortable(r[key]), reverse=sort.startswith("-"))
        return Table(rows[:n], COLUMNS)

    def top(self, n=10, node=None):
        """The ``n`` processes with the longest mailboxes (of ``node``, or "all" of the cluster's)."""
        return self.ps(sort="-mailbox", n=n, node=node)

    def i(self, pid):
        """Everything about one process: its info, state, last message and mailbox head (a pid of
        another node of the cluster, or a user online there: asked there)."""
        remote = self._locate(pid)
        if remote is not None:
            return self._remote(remote.node, "i", remote)
        proc = self.proc(pid)
        return Block({**proc.info(), "state": proc.state, "last_message": brief(proc.last_message),
                      "mailbox_head": self.mailbox(proc, 5), "monitors": len(proc.monitors),
                      "greenlet": proc.greenlet})

    def state(self, pid):
        """The process's live state object (read it here; change it with update())."""
        return self.proc(pid).state

    def mailbox(self, pid, n=10):
        """Peek at the first ``n`` messages waiting in the mailbox, without taking them."""
        remote = self._locate(pid)
        if remote is not None:
            return self._remote(remote.node, "mailbox", remote, n)
        return [brief(m) for m in itertools.islice(self.proc(pid).mailbox.queue, n)]

    def strays(self):
        """Greenlets of the node that are no process (none should be: what outlives a call is a process)."""
        return [repr(g) for g in strays(self.node.table)]

    def where(self, kind, entity):
        """Which node, pid and worker serve ``entity``: "user"/"session", or a shard kind ("offd", "accounts").

        A user's answer includes where their offd queue lives; shard kinds come from
        the node's ShardRegistry.
        """
        node = self.node
        if node.link is not None and not node.link.here(entity):  # in a cluster: its home answers
            return self._remote(node.link.home(entity), "where", kind, entity)
        if kind not in ("session", "user"):
            return node.registry.where(kind, entity)
        sessions = node.sm.devices(entity)
        pid = next(iter(sessions.values()), None)
        procs = {d: node.table.procs.get(p.n) if p.node == node.table.node else None for d, p in sessions.items()}
        return {"kind": "session", "entity": entity, "node": pid.node if pid is not None else None,
                "home": node.table.node, "pid": pid,
                "online": pid is not None, "worker": repr(procs[next(iter(procs))]) if procs else None,
                "devices": {d: {"pid": p, "worker": repr(procs[d]) if procs[d] else None}
                            for d, p in sessions.items()},
                "offd": node.registry.where("offd", entity)}

    def nodes(self):
        """The cluster's nodes: boot epoch, seconds left of the lease, up or down, the entries in
        its inbox stream (unread or not yet done), and each live node's connections, online
        users, mailbox total and entries waiting in its outbox."""
        link = self.node.link
        if link is None:
            return Table([{"node": self.node.table.node, "up": True, **self.node.summary()}], NODE_COLUMNS)
        rows = []
        for name, (epoch, left) in sorted(link.directory.leases().items()):
            row = {"node": name, "epoch": epoch, "lease_left": left, "up": name in link.live,
                   "inbox": link.client.xlen(link.key(name))}
            if row["up"]:
                try:
                    row.update(link.call(name, "summary"))
                except Exception as exc:  # one node's silence must not hide the others
                    row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
        return Table(rows, NODE_COLUMNS)

    def rpc(self, node, verb, *args):
        """Run the helper ``verb`` (one of REMOTE) with ``args`` on ``node`` of the cluster and
        return its answer, of the same type as here (a table, a block, a reload report)."""
        return self._remote(node, verb, *args)

    def serve(self, verb, args):
        """What rpc() runs here for another node: a REMOTE helper; its answer as plain data."""
        if verb not in self.REMOTE:
            raise ValueError(f"rpc runs only {', '.join(self.REMOTE)}")
        return _packed(getattr(self, verb)(*args))

    def stats(self, interval=1.0, node=None):
        """Connections, messages/s in and out (over ``interval`` s), offd queue, mailbox depths, memory,
        and under ``metrics`` every figure the Prometheus endpoint exports (whatsup.observe.metrics.snapshot).

        ``node``: another node's (asked there), or "all": every node's, measured over the same
        interval, and under ``total`` the cluster's (counts and rates summed; uptime and mailbox
        depths are the highest node's)."""
        if node == "all":
            per_node = self._everywhere("stats", interval)
            return Block(total=_total([v for v in per_node.values() if isinstance(v, dict)]), **per_node)
        if self._other(node):
            return self._remote(node, "stats", interval)
        before = self._sample()
        gevent.sleep(interval)
        after = self._sample()
        elapsed = after[0] - before[0]
        node = self.node
        procs = node.table.processes()
        depths = sorted(len(p.mailbox) for p in procs)
        kinds = {}
        for proc in procs:
            kinds[proc.kind] = kinds.get(proc.kind, 0) + 1
        return Block({
            "node": node.table.node, "uptime": round(time.time() - node.started, 1) if node.started else 0.0,
            "connections": kinds.get("session", 0), "online_users": self._online_homed(),
            "msgs_in_per_s": round((after[1] - before[1]) / elapsed, 1),
            "msgs_out_per_s": round((after[2] - before[2]) / elapsed, 1),
            "offd_queued": node.offd.queued(),
            "mailbox": {"p50": percentile(depths, 50), "p90": percentile(depths, 90),
                        "p99": percentile(depths, 99), "max": depths[-1] if depths else 0},
            "rss_mb": round(_rss_bytes() / 2 ** 20, 1), "processes": kinds,
            "counters": dict(node.counters), "metrics": metrics.snapshot(node),
        })

    def _online_homed(self):
        """Users online whose home is this node (all of them on a single node): each user of the
        cluster counts on one node only, the cluster's total is the sum."""
        link = self.node.link
        if link is None:
            return len(self.node.sm)
        return sum(1 for user in self.node.sm.users() if link.here(user))

    def _sample(self):
        """(when, msgs routed in, items acked out): the counters stats() turns into rates."""
        node = self.node
        return (time.monotonic(), node.router.counters["msg_in"],
                sum(s.stats().get("acked", 0) for s in node.offd.spools if s is not None))

    # --- acting ------------------------------------------------------------------

    def update(self, pid, fn, timeout=5.0):
        """Run ``fn(state)`` inside the process, right after the message in hand.

        Its result, unless None, becomes the new state (None: ``fn`` changed it in place).
        """
        def run(proc):
            new = fn(proc.state)
            if new is not None:
                proc.state = new
            return proc.state
        proc = self.proc(pid)
        log.warning("operator update of %r (%s)", proc.pid, proc.kind)
        return self.node.table.sys(proc.pid, run, timeout, urgent=True)

    def suspend(self, pid, limit=60.0):
        """Park the process after the message in hand until resume(pid) (at most ``limit`` s); its mailbox fills."""
        proc = self.proc(pid)
        if proc.pid in self._held:
            return f"{proc.pid!r} is already suspended"
        release, parked = Event(), Event()
        self._held[proc.pid] = release

        def hold(p):
            parked.set()
            try:
                release.wait(limit)
            finally:
                self._held.pop(p.pid, None)
        def park():
            try:
                self.node.table.sys(proc.pid, hold, limit + 5.0, urgent=True)
            except (ProcessDead, CallTimeout):  # it died, or never reached the hold
                self._held.pop(proc.pid, None)
        self.node.table.spawn(Task, park, (), entity=proc.pid)  # in ps() while it holds
        parked.wait(5.0)
        return f"{proc.pid!r} suspended" if parked.is_set() else f"{proc.pid!r} suspends after its current message"

    def resume(self, pid):
        """Let a suspended process go on with its mailbox."""
        proc = self.proc(pid)
        release = self._held.get(proc.pid)
        if release is None:
            return f"{proc.pid!r} is not suspended"
        release.set()
        return f"{proc.pid!r} resumed"

    def drain(self, pid, to="offd"):
        """Fast-drain the mailbox; to="offd" loses nothing, to="drop" drops replies too (logged).

        What happens to each kind of message: whatsup/shell/drain.py.
        """
        proc = self.proc(pid)
        report = draining.drain(proc, to)
        level = logging.WARNING if to == "drop" else logging.INFO
        log.log(level, "operator drain of %r (%s) to %s: %d -> %d messages, removed %s", proc.pid,
                proc.kind, to, report["before"], report["after"], report["removed"])
        return report

    def kill(self, pid, reason="killed by the operator"):
        """Stop the process now with ``reason``; its monitors (and supervisor) learn why."""
        proc = self.proc(pid)
        log.warning("operator kill of %r (%s): %s", proc.pid, proc.kind, reason)
        self.node.table.kill(proc.pid, reason)
        return f"{proc.pid!r} killed: {reason}"

    def reload(self, module, timeout=10.0, nodes=None):
        """Hot-load ``module``'s new code into the node and its live processes (whatsup.shell.reload).

        A module that does not load, or that reload refuses, changes nothing and gives a false
        Refused that shows the error in the module's own lines. ``nodes``: "all" (every node of
        the cluster) or a list of node names, reloaded one after the other, stopping at the first
        that fails or keeps the old code in a process: a Rollout, the outcome per node."""
        if nodes is not None:
            return self._rolling(module, timeout, self._names() if nodes == "all" else list(nodes))
        starters = [f for industry in self.node.registry.industries.values() for f in industry.factories]
        try:
            report = reloading.reload(self.node.table, module, timeout, starters)
        except reloading.ReloadError as exc:
            return Refused(str(exc))
        self.node.counters["reloads"] += 1
        return report

    def _rolling(self, module, timeout, names):
        rows, failed = [], None
        for name in names:
            if failed is not None:
                rows.append({"node": name, "outcome": "not tried", "detail": f"stopped after {failed}"})
                continue
            try:
                outcome = self._on(name, "reload", module, timeout)
            except Exception as exc:  # a node down or not answering: the roll stops there
                outcome = Refused(f"{type(exc).__name__}: {exc}")
            rows.append(_rolled(name, outcome))
            if rows[-1]["outcome"] != "reloaded":
                failed = name
        log.warning("rolling reload of %s: %s", module, ", ".join(f"{r['node']} {r['outcome']}" for r in rows))
        return Rollout(rows, ROLLOUT_COLUMNS)

    # --- plumbing ---------------------------------------------------------------

    def _other(self, node):
        """True when ``node`` names a node other than this one."""
        return node is not None and node != self.node.table.node

    def _remote(self, node, verb, *args):
        """The helper ``verb`` run on ``node`` (of the cluster), its answer of the same type as here."""
        link = self.node.link
        if link is None:
            raise ValueError("this node is not part of a cluster (cluster.map)")
        return _unpacked(link.call(node, "shell", verb, args))

    def _on(self, name, verb, *args):
        return self._remote(name, verb, *args) if self._other(name) else getattr(self, verb)(*args)

    def _names(self):
        """Every node of the cluster (this one alone without one)."""
        link = self.node.link
        return sorted(link.map.nodes) if link is not None else [self.node.table.node]

    def _everywhere(self, verb, *args):
        """{node: answer of ``verb`` there} from every node at once (a node down or silent: why, as text)."""
        link = self.node.link
        jobs = {name: gevent.spawn(self._on, name, verb, *args) for name in self._names()
                if link is None or link.up(name)}
        gevent.joinall(list(jobs.values()))
        answers = {name: "down" for name in self._names()}
        for name, job in jobs.items():
            answers[name] = job.value if job.successful() else f"{type(job.exception).__name__}: {job.exception}"
        return answers

    def _locate(self, pid):
        """The pid on another node that ``pid`` names (its text, or a user online there), else None."""
        pid, link, here = self._pid(pid), self.node.link, self.node.table.node
        if link is None:
            return None
        if isinstance(pid, Pid):
            return pid if pid.node != here else None
        if isinstance(pid, str) and not PID_TEXT.fullmatch(pid.strip()) and self.node.table.whereis(pid) is None:
            found = self.node.sm.lookup(pid) or self.where("user", pid)["pid"]
            return found if found is not None and found.node != here else None
        return None

    def _pid(self, pid):
        if isinstance(pid, str):
            match = PID_TEXT.fullmatch(pid.strip())
            if match and match["node"]:
                return Pid(match["node"], int(match["n"]))
        return pid

    def proc(self, pid):
        """The live Process for any of the pid spellings in the module docstring (ProcessDead if none)."""
        table = self.node.table
        if isinstance(pid, Process):
            return pid
        if isinstance(pid, int):
            pid = Pid(table.node, pid)
        elif isinstance(pid, str):
            match = PID_TEXT.fullmatch(pid.strip())
            if match:
                pid = Pid(match["node"] or table.node, int(match["n"]))
            else:
                found = table.whereis(pid) or self.node.sm.lookup(pid)
                if found is None:
                    raise ProcessDead(f"no process, registered name or online user {pid!r}")
                pid = found
        return table.lookup(pid)

    def _row(self, proc):
        info = proc.info()
        detail = info["detail"] or {}
        return {**{c: info.get(c) for c in COLUMNS}, "uptime": round(info["uptime"], 1),
                "who": info["name"] or _user_device(detail) or info["entity"]}

    def _c(self, source):
        """``whatsup-shell -c``: evaluate (or execute) ``source`` in the caller's namespace, print the result."""
        namespace = sys._getframe(1).f_globals  # the console runs each line with its locals as globals
        try:
            try:
                code = compile(source, "<whatsup-shell -c>", "eval")
            except SyntaxError:
                exec(compile(source, "<whatsup-shell -c>", "exec"), namespace)
                return
            result = eval(code, namespace)
            if result is not None:
                print(repr(result))
            if isinstance(result, (Refused, Rollout)) and not result:
                print(ERROR_MARK)
        except Exception:
            traceback.print_exc()
            print(ERROR_MARK)


def _sortable(value):
    if isinstance(value, Pid):
        return (-1, value.node, value.n)  # a node's processes together, in their order
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _rss_bytes():
    """Resident memory now (Linux /proc), else the peak the kernel reports."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _user_device(detail):
    """A session's user, with ``/N`` for a companion device: a user's sessions tell apart in ``ps()``."""
    user, device = detail.get("user"), detail.get("device")
    return f"{user}/{device}" if user and device else user
