"""Disk faults against a real node: a full disk, then a spool file damaged in the middle.

The full disk is real: the data dir is a small tmpfs filled with a ballast
file (ENOSPC), or, where mounting is not allowed, the node's RLIMIT_FSIZE is
lowered under the size of its spool files (EFBIG). Freeing the disk is
deleting the ballast (or raising the limit again): nothing else is done, the
node must resume by itself.
"""
import glob
import os
import resource
import subprocess

import pytest

from whatsup.client import ServerError
from whatsup.testing import ServerProcess


class FullDisk:
    """Make the node's data dir run out of space, and free it again."""

    def __init__(self, srv):
        self.srv = srv
        self.ballast = os.path.join(srv.data_dir, "ballast")
        os.makedirs(srv.data_dir)
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", srv.data_dir],
                                      capture_output=True).returncode == 0

    def fill(self):
        if not self.mounted:
            largest = max(os.path.getsize(p) for p in self.segments())
            resource.prlimit(self.srv.proc.pid, resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
            return
        chunk = b"\0" * 65536
        with open(self.ballast, "wb", buffering=0) as f:
            while chunk:
                try:
                    f.write(chunk)
                except OSError:
                    chunk = chunk[:len(chunk) // 2]

    def free(self):
        if self.mounted:
            os.unlink(self.ballast)
        else:
            resource.prlimit(self.srv.proc.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def segments(self):
        return glob.glob(os.path.join(self.srv.data_dir, "offd", "shard-*", "seg-*.log"))

    def close(self):
        self.srv.kill()
        if self.mounted:
            subprocess.run(["umount", "-l", self.srv.data_dir], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    (tmp_path / "node").mkdir()
    disk = FullDisk(ServerProcess(tmp_path / "node", {"offd.shards": 1}))
    yield disk
    disk.close()


def send_until_refused(client, to, limit=2000):
    """Send messages until the node refuses one; returns (ids ✓'d, id refused, its error code)."""
    acked = []
    for n in range(limit):
        mid = f"m{n}"
        try:
            client.send(to, f"body {n}", id=mid)
        except ServerError as exc:
            return acked, mid, exc.code
        acked.append(mid)
    raise AssertionError(f"{limit} messages stored on a full disk")


def test_a_full_disk_refuses_with_store_failed_keeps_what_was_acked_and_recovers_by_itself(full_disk):
    srv = full_disk.srv.start()
    srv.register("alice", "bob")
    alice = srv.client("alice")
    before = [alice.send("bob", f"early {n}", id=f"e{n}")["id"] for n in range(5)]
    full_disk.fill()
    acked, refused, code = send_until_refused(alice, "bob")
    assert code == "store_failed"
    with pytest.raises(ServerError) as again:
        alice.send("bob", "still full", id="again")
    assert again.value.code == "store_failed"
    full_disk.free()
    assert alice.send("bob", "retry", id=refused)["id"] == refused  # same id, now stored
    assert alice.send("bob", "retry", id="again")["id"] == "again"
    bob = srv.client("bob")
    got = [f["id"] for f in bob.drain(1.0) if f["type"] == "msg"]
    assert got == before + acked + [refused, "again"]
    receipts = [i for f in alice.drain(1.0) if f.get("status") == "delivered" for i in f["ids"]]
    assert sorted(receipts) == sorted(got)
    assert srv.proc.poll() is None and "Traceback" not in srv.log()


def test_bytes_flipped_in_the_middle_of_a_spool_file_cost_only_the_damaged_records(make_server):
    srv = make_server({"offd.shards": 1})
    srv.register("alice", "bob")
    with srv.client("alice") as alice:
        sent = [alice.send("bob", f"message {n:03d}", id=f"m{n:03d}")["id"] for n in range(40)]
    assert srv.stop() == 0
    (segment,) = [p for p in glob.glob(os.path.join(srv.data_dir, "offd", "shard-*", "seg-*.log"))
                  if os.path.getsize(p) > 1000]
    with open(segment, "r+b") as f:
        middle = os.path.getsize(segment) // 2
        f.seek(middle)
        damaged = bytes(b ^ 0xFF for b in f.read(6))
        f.seek(middle)
        f.write(damaged)
    srv.start()
    assert "damaged record region(s) skipped" in srv.log()
    bob = srv.client("bob")
    got = [f["id"] for f in bob.drain(1.0) if f["type"] == "msg"]
    assert len(sent) - 2 <= len(got) < len(sent)  # six bytes hit one record, two at most
    assert [m for m in sent if m in got] == got  # every other record intact, in order
    assert "Traceback" not in srv.log()
