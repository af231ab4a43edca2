"""Move offd spools and accounts from M shards to N shards, offline (``whatsup-reshard`` is the CLI).

As at WhatsApp, changing a shard count is a deliberate manual operation: the
node is stopped (the data dir's LOCK is taken, so a live node makes this
refuse), every store is rebuilt beside the old one, verified, and then swapped
in. The plan:

1. ``offd.new/`` and ``accounts.new/`` are written with the new shard counts.
   An offd item keeps its seq, ts, sender and id, and a user's items keep their
   order (a user's items all come from one old shard, in seq order); a group
   copy shared by several members becomes one P record each; a device that
   acked past the front of its user's queue keeps its place (an A record). Every new
   shard starts with a base record of the highest counter of all old shards,
   so no user's seq ever goes backwards (devices drop seqs they have seen).
2. The new stores are read back the way the node will read them (Spool
   recovery, sqlite) and compared user by user with what was read from the
   old ones; any difference aborts before anything is swapped.
3. ``RESHARDING`` is written, each store ``X`` is renamed to ``X.old`` and
   ``X.new`` to ``X``, ``RESHARDING`` is removed, the ``.old`` copies deleted.
   The node refuses to start while ``RESHARDING`` exists; running the tool
   again after an interruption first rolls the swap back, then starts over.
"""
import logging
import os
import shutil

from . import datadir
from .accounts import open_db, shard_path
from .offd import record, shard_dir, shard_of
from .offd.spool import SEGMENT, Spool

log = logging.getLogger("whatsup.reshard")
STORES = ("offd", "accounts")


class ReshardError(Exception):
    """The data could not be moved safely; nothing was swapped."""


# --- offd ---------------------------------------------------------------------------

def _quiet(done, total):
    """The default progress callback: nothing to say."""


def read_offd(directory, shards, options, progress=_quiet):
    """``({user: [Item...]}, highest counter, {user: {device: acked seq}})`` as the node would
    recover them (the last: devices past the front of their user's queue)."""
    queues, counter, cursors = {}, 0, {}
    for i in range(shards):
        part, top, places = _read_shard(directory, i, options)
        queues.update(part)
        cursors.update(places)
        counter = max(counter, top)
        progress(i + 1, shards)
    return queues, counter, cursors


def same_offd(directory, shards, options, queues, counter, cursors, progress=_quiet):
    """Whether the spool in ``directory`` holds ``queues`` item by item, ``cursors``, and seqs above
    ``counter``: read back one shard at a time (the verify step holds one shard's items, not
    the whole spool's twice)."""
    by_shard = [[] for _ in range(shards)]
    for user in queues:
        by_shard[shard_of(user, shards)].append(user)
    for i, users in enumerate(by_shard):
        part, top, places = _read_shard(directory, i, options)
        if set(part) != set(users) or top < counter or \
                fingerprint(part) != fingerprint({u: queues[u] for u in users}) or \
                places != {u: cursors[u] for u in users if u in cursors}:
            return False
        del part
        progress(i + 1, shards)
    return True


def _read_shard(directory, i, options):
    spool = Spool(shard_dir(directory, i), *options)
    spool.open()
    try:
        if spool.incomplete:
            raise ReshardError(f"offd shard {i} holds {len(spool.incomplete)} group fan-out(s) a crash cut "
                               f"short: start the node once (it completes them), stop it, then reshard")
        users = spool.users()
        return ({u: spool.items(u) for u in users}, spool.stats()["counter"],
                {u: spool.positions(u) for u in users if spool.positions(u)})
    finally:
        spool.close()


def write_offd(directory, shards, queues, counter, cursors, progress=_quiet):
    os.makedirs(directory)
    by_shard = [[] for _ in range(shards)]
    for user, items in queues.items():
        by_shard[shard_of(user, shards)].append((user, items))
    for i, users in enumerate(by_shard):
        sdir = shard_dir(directory, i)
        os.makedirs(sdir)
        with open(os.path.join(sdir, SEGMENT.format(1)), "wb") as f:
            f.write(record.base(counter))
            for user, items in users:
                for it in items:
                    f.write(record.put(user, it.seq, it.ts, it.kind, it.sender, it.cid, it.frame))
                for device, upto in cursors.get(user, {}).items():
                    f.write(record.cursor(user, device, upto))
            f.flush()
            os.fsync(f.fileno())
        datadir.fsync_dir(sdir)
        progress(i + 1, shards)
    datadir.write_marker(os.path.join(directory, "SHARDS"), f"{shards}\n")


def fingerprint(queues):
    """What must survive a rewrite of ``queues``, item by item (the verify step compares these)."""
    return {u: [(i.seq, i.ts, i.kind, i.sender, i.cid, bytes(i.frame)) for i in items]
            for u, items in queues.items()}


# --- accounts -------------------------------------------------------------------------

def read_accounts(directory, shards, progress=_quiet):
    users = {}
    for i in range(shards):
        db = open_db(shard_path(directory, i))
        try:
            users.update(db.items())
        finally:
            db.close()
        progress(i + 1, shards)
    return users


def write_accounts(directory, shards, users, progress=_quiet):
    os.makedirs(directory)
    by_shard = [{} for _ in range(shards)]
    for user, rec in users.items():
        by_shard[shard_of(user, shards)][user] = rec
    for i, part in enumerate(by_shard):
        datadir.fill(open_db(shard_path(directory, i)), part)
        progress(i + 1, shards)
    datadir.write_marker(os.path.join(directory, "SHARDS"), f"{shards}\n")


# --- the plan ---------------------------------------------------------------------------

def roll_back(data_dir):
    """Undo an interrupted swap and remove half-built stores; returns what it did."""
    done = []
    marker = os.path.join(data_dir, datadir.RESHARDING)
    for store in STORES:
        path = os.path.join(data_dir, store)
        if os.path.exists(marker) and os.path.isdir(path + ".old"):
            if os.path.isdir(path):
                shutil.rmtree(path)
            os.rename(path + ".old", path)
            done.append(f"restored {store} from {store}.old")
        elif os.path.isdir(path + ".old"):
            shutil.rmtree(path + ".old")  # the swap completed; only the clean-up was cut short
        if os.path.isdir(path + ".new"):
            shutil.rmtree(path + ".new")
            done.append(f"removed a half-built {store}.new")
    if os.path.exists(marker):
        os.unlink(marker)
    datadir.fsync_dir(data_dir)
    return done


def reshard(data_dir, offd_shards, accounts_shards, offd_options, say=print, progress=None):
    """Reshard ``data_dir`` (the node stopped) to the given counts; returns a summary dict.

    ``progress(label, done, total)``, if given, hears of each shard read, written and verified.
    """
    with datadir.lock(data_dir):
        for line in roll_back(data_dir):
            say(line)
        targets = {"offd": offd_shards, "accounts": accounts_shards}
        summary, built = {}, []
        for store, new in targets.items():
            path = os.path.join(data_dir, store)
            old = datadir.read_shards(path)
            if old is None or old == new or not new:
                say(f"{store}: {old or 'no'} shards on disk, {new} wanted: nothing to move")
                continue
            steps = passes(store, progress)
            if store == "offd":
                queues, counter, cursors = read_offd(path, old, offd_options, next(steps))
                write_offd(path + ".new", new, queues, counter, cursors, next(steps))
                if not same_offd(path + ".new", new, offd_options, queues, counter, cursors, next(steps)):
                    raise ReshardError(f"offd: the rewritten spool differs from the old one; "
                                       f"nothing swapped ({path}.new kept for inspection)")
                n = sum(len(v) for v in queues.values())
                summary[store] = {"from": old, "to": new, "users": len(queues), "items": n,
                                  "counter": counter}
                say(f"offd: {old} -> {new} shards: {n} items of {len(queues)} users moved and "
                    f"verified; seqs continue above {counter}")
            else:
                users = read_accounts(path, old, next(steps))
                write_accounts(path + ".new", new, users, next(steps))
                if read_accounts(path + ".new", new, next(steps)) != users:
                    raise ReshardError(f"accounts: the rewritten store differs from the old one; "
                                       f"nothing swapped ({path}.new kept for inspection)")
                summary[store] = {"from": old, "to": new, "users": len(users)}
                say(f"accounts: {old} -> {new} shards: {len(users)} users moved and verified")
            built.append(store)
        if built:
            _swap(data_dir, built)
        return summary


def passes(what, progress):
    """The progress callbacks of one store's three passes over its shards (reading, writing,
    verifying), ``what`` naming the store; also whatsup/cluster/move.py's."""
    for verb in ("reading", "writing", "verifying"):
        if progress is None:
            yield _quiet
        else:
            yield lambda done, total, label=f"{what}: {verb} shards": progress(label, done, total)


def _swap(data_dir, stores):
    datadir.write_marker(os.path.join(data_dir, datadir.RESHARDING), " ".join(stores) + "\n")
    for store in stores:
        path = os.path.join(data_dir, store)
        os.rename(path, path + ".old")
        os.rename(path + ".new", path)
    datadir.fsync_dir(data_dir)
    os.unlink(os.path.join(data_dir, datadir.RESHARDING))
    datadir.fsync_dir(data_dir)
    for store in stores:
        shutil.rmtree(os.path.join(data_dir, store) + ".old")
