"""Move cluster shards from one node to another, offline (``whatsup-reshard move``; docs/ADMIN.md).

The shard map is static (whatsup/cluster/map.py): changing it is a manual,
verified operation with the nodes stopped, as whatsup-reshard is within one
node. Every node of the map must be down (no lease in Redis): a node reads the
map only when it starts, so one left running would keep routing the moved users
to their old home. The source's inbox stream must be empty (a node serves its
pending entries again when it starts, under the map they were sent with).

What moves: the users and groups whose home changes (``old.home(x) != new.home(x)``):
their offd queues (items keep seq, ts, sender and id, devices their place; the
destination's counter starts above both nodes' counters, so no seq goes backwards), their
account rows, and the rows keyed by them in the tables of social.sqlite that
follow a home (:data:`HOMED`). The plan, with ``MOVING`` (a JSON journal) in
both data dirs from step 1 until the end; a node refuses to start while its
data dir holds it (whatsup/store/datadir.py):

1. Both data dirs locked, every lease absent, the recorded map the old one;
   the journals written (state "prepared").
2. Each store ``X`` of both nodes rebuilt as ``X.new``: the source's without
   what moves, then the destination's with it; read back the way the node
   reads it and compared with what was read (items, device places, rows; any
   difference aborts). Everything is held in RAM (docs/SCALING.md has the cost).
3. The commit: the new map recorded in Redis in one Lua step that fails if any
   node holds a lease (Directory.swap_map); then the journals say "committed".
4. In each data dir ``X`` -> ``X.old``, ``X.new`` -> ``X``; the new map written
   to the map file (or printed); the ``.old`` copies deleted (the moved data
   leaves the source only now); the journals removed.

A crash at any step leaves the old or the new layout whole: running the tool
again (:func:`finish`, which every run starts with) rolls a journal back (it
removes the ``.new`` stores) unless it says "committed" or Redis already
records its new map, in which case it completes the swap. Nodes started with
the old map then refuse to start (their map differs from the recorded one).
"""
import json
import logging
import os
import shutil

from sqlitedict import SqliteDict

from . import engine
from .directory import Directory
from .map import load
from ..store import datadir
from ..store.reshard import (ReshardError, passes, read_accounts, read_offd, same_offd, write_accounts,
                             write_offd)
from ..store.tables import open_table

log = logging.getLogger("whatsup.reshard")
TABLES = "social.sqlite"
STORES = ("offd", "accounts", TABLES)
#: social.sqlite's tables whose rows live on the home of their key (a group id, a user name); the
#: others (invites, push tokens) belong to the node that wrote them and stay.
HOMED = ("groups", "blocks", "privacy", "bans", "retired")
SIDECARS = ("", "-wal", "-shm")  # an sqlite file moves with its write-ahead log
FRESH = {"offd": datadir.DEFAULT_SHARDS, "accounts": datadir.DEFAULT_SHARDS}  # what a node starts with


class MoveError(ReshardError):
    """The shards could not be moved safely; the message says why (one line)."""


def _quiet(step):
    """The default step hook: nothing to do (tests crash the tool here)."""


def move(map_path, shards, dest, dirs, offd_options, write_map=True, say=print, step=_quiet, progress=None,
         fresh=FRESH, timeout=5.0):
    """Give ``shards`` to node ``dest``; ``dirs`` is {node: data dir} of (at least) the source and
    ``dest``. Returns a summary dict. ``step(name)`` is called after each step, ``progress(label,
    done, total)`` (whatsup/cli/progress.py) as each store's shards are read, written, verified.
    A ``dest`` that never started (a new node) gets stores of ``fresh`` shard counts."""
    given = {n: os.path.abspath(d) for n, d in dirs.items()}
    directory = Directory(engine.connect(load(map_path).redis, timeout), load(map_path), None, 0)
    locks = [datadir.lock(d) for d in given.values()]
    try:
        for line in _finish(directory, given.values(), say):
            say(line)
        old = load(map_path)   # (rewritten if that completed a move cut short after its commit)
        new = old.moved(shards, dest)
        sources = {old.owner[s] for s in shards} - {dest}
        if not sources:
            say(f"shards {sorted(shards)} belong to {dest}: nothing to move")
            return {"from": dest, "to": dest, "shards": sorted(shards), "users": 0, "items": 0, "rows": 0}
        if len(sources) != 1:
            raise MoveError(f"shards {sorted(shards)} must all belong to one node other than {dest} "
                            f"(they belong to {sorted({old.owner[s] for s in shards})})")
        source = sources.pop()
        pair = _dirs(given, (source, dest))
        _check(directory, old, new, source)
        journal = {"state": "prepared", "from": source, "to": dest, "shards": sorted(shards),
                   "old": old.fingerprint(), "new": new.fingerprint(), "dirs": pair,
                   "map_path": os.path.abspath(map_path) if write_map else None, "map": new.toml()}
        _journal(pair.values(), journal)
        step("prepared")
        summary = _build(pair, source, dest, lambda x: new.home(x) == dest and old.home(x) == source,
                         offd_options, step, progress, fresh)
        summary.update({"from": source, "to": dest, "shards": sorted(shards)})
        blocker = directory.swap_map(journal["old"], journal["new"])
        if blocker:
            _roll_back(pair.values())
            raise MoveError(_refusal(blocker, directory) + "; nothing moved")
        step("recorded")
        _complete(directory, journal, say, step)
        say(f"moved shards {sorted(shards)} from {source} to {dest}: {summary['users']} accounts, "
            f"{summary['items']} queued items, {summary['rows']} table rows, verified")
        return summary
    finally:
        for lock in locks:
            lock.close()


def finish(map_path, dirs, say=print, timeout=5.0):
    """Complete or roll back what an interrupted move left in ``dirs`` ({node: data dir});
    returns the lines said (empty: nothing was left)."""
    cmap = load(map_path)
    directory = Directory(engine.connect(cmap.redis, timeout), cmap, None, 0)
    locks = [datadir.lock(d) for d in dirs.values()]
    try:
        done = list(_finish(directory, dirs.values(), say))
        for line in done:
            say(line)
        return done
    finally:
        for lock in locks:
            lock.close()


# --- checks ------------------------------------------------------------------------------

def _dirs(dirs, nodes):
    missing = [n for n in nodes if n not in dirs]
    if missing:
        raise MoveError(f"give the data dir of {', '.join(missing)} (--data-dir NODE=PATH)")
    return {n: dirs[n] for n in nodes}


def _check(directory, old, new, source):
    recorded = directory.recorded_map()
    if recorded not in (None, old.fingerprint()):
        raise MoveError(f"Redis records another map than this one ({directory.keys['map']}): "
                        f"{'the move was done already' if recorded == new.fingerprint() else 'which is the real one?'}")
    live = sorted(n for n, (epoch, _) in directory.leases().items() if epoch is not None)
    if live:
        raise MoveError(f"{', '.join(live)} {'is' if len(live) == 1 else 'are'} live (lease in Redis): stop every "
                        f"node of the cluster first (each reads the map only when it starts)")
    waiting = directory.r.xlen(f"{old.prefix}:inbox:{source}")
    if waiting:
        raise MoveError(f"{waiting} entries wait in {source}'s inbox (sent to it before it stopped): start "
                        f"{source} alone with the old map to serve them, stop it, then move")


def _refusal(key, directory):
    if key == directory.keys["map"]:
        return f"Redis now records another map ({key})"
    return f"a node started while the shards were being copied ({key} holds)"


# --- what moves ---------------------------------------------------------------------------

def read_node(data_dir, offd_options, steps=None, fresh=None):
    """Everything of one data dir the move touches, as the node would read it; ``steps`` the
    progress callbacks of each store's passes (_passes). ``fresh``: the shard counts of a data
    dir whose node never started (no stores yet: a new node), else that is refused."""
    steps = steps or _passes(data_dir, None)
    stores = {name: os.path.join(data_dir, name) for name in STORES}
    shards = {name: datadir.read_shards(stores[name]) for name in ("offd", "accounts")}
    if fresh is not None and shards == {"offd": None, "accounts": None} and not os.path.exists(stores[TABLES]):
        return {"shards": dict(fresh), "queues": {}, "counter": 0, "cursors": {}, "accounts": {}, "tables": {}}
    if None in shards.values():
        raise MoveError(f"{data_dir} holds no offd or accounts store: start its node once, then move")
    queues, counter, cursors = read_offd(stores["offd"], shards["offd"], offd_options, next(steps["offd"]))
    return {"shards": shards, "queues": queues, "counter": counter, "cursors": cursors,
            "accounts": read_accounts(stores["accounts"], shards["accounts"], next(steps["accounts"])),
            "tables": read_tables(stores[TABLES])}


def _passes(node, progress):
    """{store: its reading, writing and verifying progress callbacks} of one node's stores."""
    return {store: passes(f"{node} {store}", progress) for store in ("offd", "accounts")}


def read_tables(path):
    """{table: {key: value}} of an sqlite file of tables ({} if there is none)."""
    if not os.path.exists(path):
        return {}
    out = {}
    for name in SqliteDict.get_tablenames(path):
        db = open_table(path, name)
        try:
            out[name] = dict(db.items())
        finally:
            db.close()
    return out


def write_tables(path, tables):
    for name, rows in tables.items():
        datadir.fill(open_table(path, name), rows)


def split(content, moves):
    """``(kept, moved)``: ``content`` (read_node's) parted by ``moves(user or group id)``."""
    kept = {**content, "queues": {}, "cursors": {}, "accounts": {}, "tables": {}}
    moved = {"queues": {}, "cursors": {}, "accounts": {}, "tables": {}}
    for part in ("queues", "cursors", "accounts"):
        for key, value in content[part].items():
            (moved if moves(key) else kept)[part][key] = value
    for name, rows in content["tables"].items():
        kept["tables"][name] = {k: v for k, v in rows.items() if name not in HOMED or not moves(k)}
        if name in HOMED:
            moved["tables"][name] = {k: v for k, v in rows.items() if moves(k)}
    return kept, moved


def join(content, moved, counter):
    """``content`` with ``moved`` added, seqs going on above ``counter``; refuses an overlap."""
    out = {**content, "counter": max(content["counter"], counter)}
    for part in ("queues", "cursors", "accounts"):
        _disjoint(content[part], moved[part], part)
        out[part] = {**content[part], **moved[part]}
    out["tables"] = dict(content["tables"])
    for name, rows in moved["tables"].items():
        _disjoint(out["tables"].get(name, {}), rows, f"table {name}")
        out["tables"][name] = {**out["tables"].get(name, {}), **rows}
    return out


def _disjoint(here, coming, what):
    both = sorted(set(here) & set(coming))
    if both:
        raise MoveError(f"the destination already holds {what} of {both[:5]}: it is not theirs under the "
                        f"old map; nothing moved")


def _build(dirs, source, dest, moves, offd_options, step, progress, fresh):
    """Rebuild the source's stores without what moves, then the destination's with it (one node
    after the other: a failure names the node); returns what moved."""
    steps = _passes(source, progress)
    src = read_node(dirs[source], offd_options, steps)
    kept, moved = split(src, moves)
    counter = src["counter"]
    del src
    _write(dirs[source], kept, steps)
    _verify(dirs[source], kept, offd_options, steps)
    del kept
    step("source rebuilt")
    steps = _passes(dest, progress)
    after = join(read_node(dirs[dest], offd_options, steps, fresh), moved, counter)
    _write(dirs[dest], after, steps)
    _verify(dirs[dest], after, offd_options, steps)
    step("destination rebuilt")
    return {"users": len(moved["accounts"]), "queues": len(moved["queues"]),
            "items": sum(len(q) for q in moved["queues"].values()),
            "rows": sum(len(rows) for rows in moved["tables"].values())}


def _write(data_dir, content, steps):
    path = os.path.join(data_dir, "{}.new").format
    write_offd(path("offd"), content["shards"]["offd"], content["queues"], content["counter"], content["cursors"],
               next(steps["offd"]))
    write_accounts(path("accounts"), content["shards"]["accounts"], content["accounts"], next(steps["accounts"]))
    write_tables(path(TABLES), content["tables"])
    datadir.fsync_dir(data_dir)


def _verify(data_dir, content, offd_options, steps):
    path = os.path.join(data_dir, "{}.new").format
    if not same_offd(path("offd"), content["shards"]["offd"], offd_options, content["queues"], content["counter"],
                     content["cursors"], next(steps["offd"])):
        raise MoveError(f"{path('offd')} differs from what it should hold; nothing swapped")
    if read_accounts(path("accounts"), content["shards"]["accounts"], next(steps["accounts"])) != content["accounts"]:
        raise MoveError(f"{path('accounts')} differs from what it should hold; nothing swapped")
    if read_tables(path(TABLES)) != content["tables"]:
        raise MoveError(f"{path(TABLES)} differs from what it should hold; nothing swapped")


# --- the journal and the swap ---------------------------------------------------------------

def _journal(dirs, journal):
    for d in dirs:
        datadir.write_marker(os.path.join(d, datadir.MOVING), json.dumps(journal, indent=1) + "\n")


def _read_journal(data_dir):
    try:
        with open(os.path.join(data_dir, datadir.MOVING)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _finish(directory, dirs, say):
    """Roll back or complete the journals found in ``dirs`` (see the module docstring)."""
    journals = [j for j in map(_read_journal, dirs) if j is not None]
    if not journals:
        return []
    journal = next((j for j in journals if j["state"] == "committed"), journals[0])
    absent = sorted(set(journal["dirs"].values()) - {os.path.abspath(d) for d in dirs})
    if absent:
        raise MoveError(f"an unfinished move also concerns {', '.join(absent)}: give its --data-dir too")
    if journal["state"] == "committed" or directory.recorded_map() == journal["new"]:
        return _complete(directory, journal, say)
    _roll_back(journal["dirs"].values())
    return [f"rolled back an unfinished move of shards {journal['shards']} from {journal['from']} "
            f"to {journal['to']} (it had not been committed)"]


def _roll_back(dirs):
    for d in dirs:
        for store in STORES:
            _remove(os.path.join(d, store + ".new"))
        if os.path.exists(os.path.join(d, datadir.MOVING)):
            os.unlink(os.path.join(d, datadir.MOVING))
        datadir.fsync_dir(d)


def _complete(directory, journal, say, step=_quiet):
    """From the commit on: record the map (again), swap, write the map, clean up. Each step can be
    repeated, so a crash anywhere in here is finished by the next run."""
    blocker = directory.swap_map(journal["old"], journal["new"])
    if blocker:
        raise MoveError(f"cannot record the new map: {_refusal(blocker, directory)}; the move stays "
                        f"unfinished (the nodes concerned refuse to start): stop the nodes and run again")
    dirs = list(journal["dirs"].values())
    _journal(dirs, {**journal, "state": "committed"})
    step("committed")
    for d in dirs:
        for store in STORES:
            path = os.path.join(d, store)
            if os.path.exists(path + ".new"):
                if os.path.exists(path):
                    _rename(path, path + ".old")
                _rename(path + ".new", path)
        datadir.fsync_dir(d)
        step(f"swapped {d}")
    if journal["map_path"]:
        datadir.write_marker(journal["map_path"], journal["map"])
        say(f"the new map is in {journal['map_path']}: copy it to every node")
    else:
        say("the new map (put it in every node's cluster.map file):\n" + journal["map"])
    step("map written")
    for d in dirs:
        for store in STORES:
            _remove(os.path.join(d, store + ".old"))
        os.unlink(os.path.join(d, datadir.MOVING))
        datadir.fsync_dir(d)
    return [f"completed the move of shards {journal['shards']} from {journal['from']} to {journal['to']}"]


def _rename(src, dst):
    for suffix in SIDECARS:
        if os.path.exists(src + suffix):
            os.rename(src + suffix, dst + suffix)


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    for suffix in SIDECARS:
        if os.path.isfile(path + suffix):
            os.unlink(path + suffix)
