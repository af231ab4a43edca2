"""whatsup/store/reshard.py on real files, no server: an interrupted swap is rolled back and redone."""
import os
import shutil

import gevent
import pytest

from whatsup.store import datadir
from whatsup.store.offd import Offd, ShardMismatch, shard_dir, shard_of
from whatsup.store.offd.spool import Spool
from whatsup.store.reshard import read_offd, reshard
from whatsup.runtime import ProcessTable

OPTIONS = (1 << 20, 1000, 30.0)


def make_offd(directory, shards, users, per_user):
    Offd(ProcessTable(), directory, shards, *OPTIONS).check()
    spools = [Spool(shard_dir(directory, i), *OPTIONS).open() for i in range(shards)]
    for n in range(per_user):
        for user in users:
            spools[shard_of(user, shards)].put(user, "msg", {"type": "msg", "body": f"{n}"},
                                               sender="s", cid=f"{user}-{n}")
    spools[shard_of(users[0], shards)].link(users[0], 1)  # a companion linked after: past its items
    for sp in spools:
        sp.close()


def test_an_interrupted_swap_is_refused_by_the_node_and_redone_by_the_tool(tmp_path):
    data = str(tmp_path)
    offd = os.path.join(data, "offd")
    users = [f"user{i}" for i in range(10)]
    make_offd(offd, 2, users, 5)
    before, counter, cursors = read_offd(offd, 2, OPTIONS)
    # The swap was cut after the old store moved aside and half of the new one moved in.
    shutil.copytree(offd, offd + ".old")
    shutil.rmtree(shard_dir(offd, 1))
    datadir.write_marker(os.path.join(data, datadir.RESHARDING), "offd\n")
    with pytest.raises(ShardMismatch, match="interrupted whatsup-reshard"):
        Offd(ProcessTable(), offd, 2, *OPTIONS).check()
    said = []
    summary = gevent.spawn(reshard, data, 5, 1, OPTIONS, said.append).get()
    assert "restored offd from offd.old" in said
    assert summary["offd"].pop("counter") >= counter  # every open moves it SEQ_GAP further
    assert summary["offd"] == {"from": 2, "to": 5, "users": 10, "items": 50}
    after, new_counter, cursors_after = read_offd(offd, 5, OPTIONS)
    assert {u: [i.seq for i in q] for u, q in after.items()} == {u: [i.seq for i in q] for u, q in before.items()}
    assert new_counter >= counter
    assert cursors_after == cursors and list(cursors) == ["user0"]
    assert sorted(os.listdir(data)) == ["LOCK", "offd"]
    Offd(ProcessTable(), offd, 5, *OPTIONS).check()
