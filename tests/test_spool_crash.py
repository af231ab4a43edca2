"""Crash states of the offd spool, in the spirit of SQLite's crash VFS and the ALICE study.

A scripted workload runs against a real :class:`Spool` (real files, real
fsync) and the spool directory is photographed after every completed group
commit. Between two photographs a crash may leave any of these states, and
each is recovered by a fresh Spool and checked:

* a torn append: every file the batch touched cut at *every* byte offset of
  what the batch appended (the other files before or after the batch);
* a missing directory fsync: a segment the batch created is not there at all;
* a crash between compaction's rewrite and its unlink: the old segments are
  still there next to the rewritten records (and any prefix of them unlinked).

Promise checked (docs/RELIABILITY.md): every item ✓'d (its put fsynced) before
the last completed commit and not acked by the device survives, exactly once
and with the same seq and bytes; an item whose delete was durable stays gone;
no seq the device may have seen is stamped again after recovery.
"""
import os
import random
import shutil
import tempfile

import pytest

from whatsup.protocol import PRIMARY
from whatsup.store.offd import Spool

USERS = ("ann", "bob", "cid")
ROUNDS = 12


def snapshot(directory):
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def spool(directory):
    return Spool(str(directory), segment_bytes=512, max_queue=10_000, expiry_days=0)


class Workload:
    """Runs the script and keeps, per photograph, what the spool promised by then."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.sp = spool(directory).open()
        self.frames = {}        # (user, seq) -> packed frame
        self.durable = {}       # (user, seq) -> index of the first photo it is durable in
        self.deleted = {}       # (user, seq) -> index of the photo its delete is durable in
        self.photos = []

    def commit(self):
        self.sp.flush()
        self.sp._pool.apply(lambda: None)  # compaction's unlink runs on the writer after its fsync
        self.photos.append(snapshot(self.dir))

    def put(self, user, n):
        k = len(self.photos)
        item = self.sp.put(user, "msg", {"type": "msg", "from": "x", "id": f"m{n}", "body": "b" * (n % 8)},
                           sender="x", cid=f"m{n}",
                           on_durable=lambda err: self.durable.setdefault((user, item.seq), k))
        self.frames[(user, item.seq)] = item.frame

    def deliver_and_ack(self, user, upto_index):
        self.sp.login(user, PRIMARY)
        sent = self.sp.next_batch(user, PRIMARY, 100)
        if sent:
            acked = self.sp.ack(user, PRIMARY, sent[min(upto_index, len(sent) - 1)].seq)
            self.sp.release(acked)
            for item in acked.items:
                self.deleted[(user, item.seq)] = len(self.photos)

    def run(self):
        rng = random.Random(7)
        self.commit()
        n = 0
        for r in range(ROUNDS):
            for _ in range(rng.randint(1, 4)):
                n += 1
                self.put(rng.choice(USERS), n)
            if r % 2:
                self.deliver_and_ack(rng.choice(USERS), rng.randint(0, 3))
            if r % 3 == 2:
                self.sp.maintain()
            self.commit()
        self.sp.close()
        return self


def crash_states(prev, nxt):
    """(label, files) for every state a crash during the commit prev -> nxt may leave."""
    grown = [n for n in nxt if nxt[n] != prev.get(n)]
    removed = sorted(n for n in prev if n not in nxt)
    for name in grown:
        old = prev.get(name, b"")
        assert nxt[name].startswith(old), f"{name} was rewritten, not appended to"
        for others in (prev, nxt) if len(grown) > 1 else (prev,):
            for cut in range(len(old), len(nxt[name])):
                files = {n: others[n] for n in others if n in nxt or n in removed}
                files.update({n: prev[n] for n in removed})
                files[name] = nxt[name][:cut]
                yield f"{name} torn at {cut} (others {'before' if others is prev else 'after'})", files
        if name not in prev:
            files = {n: d for n, d in {**prev, **nxt}.items() if n != name}
            yield f"{name} missing (no directory fsync)", files
    for k in range(len(removed)):
        files = dict(nxt)
        files.update({n: prev[n] for n in removed[k:]})
        yield f"rewritten, {k} of {len(removed)} old segments unlinked", files


def check(w, photo, files, target, label):
    """Recover ``files`` (a crash during the commit to photo ``photo``) and check the promise."""
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for name, data in files.items():
        with open(os.path.join(target, name), "wb") as f:
            f.write(data)
    sp = spool(target).open()
    try:
        got = {}
        for user in sp.users():
            items = sp.items(user)
            seqs = [i.seq for i in items]
            assert seqs == sorted(set(seqs)), f"{label}: duplicates or disorder for {user}: {seqs}"
            for item in items:
                got[(user, item.seq)] = item.frame
        for key, frame in got.items():
            assert w.frames.get(key) == frame, f"{label}: {key} recovered with other bytes"
            assert w.deleted.get(key, photo) >= photo, f"{label}: {key} came back after its durable delete"
        must = [key for key, k in w.durable.items() if k < photo and key not in w.deleted]
        missing = [key for key in must if key not in got]
        assert not missing, f"{label}: ✓'d items lost: {missing}"
        seen = [seq for (_, seq), k in w.durable.items() if k < photo]
        counter = sp.stats()["counter"]
        assert counter >= max(seen, default=0), f"{label}: seq counter went back to {counter}"
    finally:
        sp.close()


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return Workload(tmp_path_factory.mktemp("spool") / "offd").run()


def test_the_workload_rolls_segments_and_compacts(workload):
    names = set().union(*workload.photos)
    assert len(names) >= 3, "the script should span several segments"
    assert any(set(a) - set(b) for a, b in zip(workload.photos, workload.photos[1:])), "no compaction"
    assert workload.deleted and len(workload.durable) == len(workload.frames)


@pytest.fixture
def scratch(tmp_path):
    """Where crash states are recovered: RAM when there is a /dev/shm (thousands of them)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    directory = tempfile.mkdtemp(prefix="whatsup-crash-", dir=base)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_every_acked_item_survives_every_crash_state_exactly_once(workload, scratch):
    states = 0
    for photo in range(1, len(workload.photos)):
        prev, nxt = workload.photos[photo - 1], workload.photos[photo]
        for label, files in crash_states(prev, nxt):
            check(workload, photo, files, os.path.join(scratch, "crash"), f"commit {photo}: {label}")
            states += 1
        check(workload, photo + 1, nxt, os.path.join(scratch, "crash"), f"after commit {photo}")
    assert states > 1000


def recovered(directory, target):
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(directory, target)
    sp = spool(target).open()
    try:
        return {user: [i.seq for i in sp.items(user)] for user in sp.users()}
    finally:
        sp.close()


def test_an_item_sent_before_its_fsync_and_lost_in_a_crash_never_gives_its_seq_away(tmp_path):
    directory = tmp_path / "offd"
    sp = spool(directory).open()
    try:
        sp.put("ann", "msg", {"type": "msg"})
        sp.flush()
        segment = max(directory.iterdir())
        durable_size = segment.stat().st_size
        item = sp.put("ann", "msg", {"type": "msg"})
        assert sp.next_batch("ann", PRIMARY, 10)[-1] is item  # delivery does not wait for the fsync
    finally:
        sp.close()
    with open(segment, "r+b") as f:  # the crash came before that write reached the disk
        f.truncate(durable_size)
    sp = spool(directory).open()
    try:
        assert [i.seq for i in sp.items("ann")] == [item.seq - 1]
        assert sp.put("ann", "msg", {"type": "msg"}).seq > item.seq  # a device would skip a reused seq
    finally:
        sp.close()


def test_acked_items_are_deleted_only_when_released_and_in_ack_order(tmp_path):
    sp = spool(tmp_path / "offd").open()
    try:
        first, second = sp.put("ann", "msg", {}), sp.put("ann", "msg", {})
        sp.flush()
        sp.next_batch("ann", PRIMARY, 10)
        a1, a2 = sp.ack("ann", PRIMARY, first.seq), sp.ack("ann", PRIMARY, second.seq)
        sp.release(a2)  # its receipts were stored first: a1's are still pending
        sp.flush()
        assert recovered(tmp_path / "offd", tmp_path / "r1") == {"ann": [first.seq, second.seq]}
        sp.release(a1)
        sp.flush()
        assert recovered(tmp_path / "offd", tmp_path / "r2") == {}
    finally:
        sp.close()


def test_a_record_of_unexpected_shape_is_counted_and_skipped_not_fatal(tmp_path):
    from whatsup.store.offd import record
    sp = spool(tmp_path / "offd").open()
    first = sp.put("ann", "msg", {})
    sp._append(record.encode(["I", "too", "short"]))  # intact bytes, a shape recovery does not know
    second = sp.put("ann", "msg", {})
    sp.flush()
    sp.close()
    sp = spool(tmp_path / "offd").open()
    try:
        assert [i.seq for i in sp.items("ann")] == [first.seq, second.seq]
        assert sp.stats()["bad_records"] == 1
    finally:
        sp.close()
