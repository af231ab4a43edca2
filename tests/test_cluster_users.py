"""Users across three real nodes joined through one real redis-server, shared by the module's tests
(each uses names of its own): groups whose members and homes are spread over the nodes, bans and
retired names held on every node, companion devices on another node than the primary's and the
user's home (docs/ARCHITECTURE.md, "A cluster")."""
import json
import os
import subprocess

import pytest

from social import quiet, take, wait_for
from test_devices import collect, info, msgs, n_msgs, receipts
from whatsup.client import Client, ServerError
from whatsup.testing import LocalCluster, RedisServer, closed_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """One cluster for the module (three nodes cost ~5 s to start); the hub-blocked gate as
    make_cluster's, checked when the module ends."""
    d = tmp_path_factory.mktemp("cluster-users")
    redis = RedisServer(d / "redis").start()
    cluster = LocalCluster(d / "cluster", redis)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        redis.kill()
    blocked = [report for srv in cluster.nodes.values() for report in srv.blocking_reports()]
    assert not blocked, "the hub was blocked:\n" + "\n".join(blocked)


def served(cl, ask, node, what):
    """How many ``what`` (``call:put_group``, ``cast:relay``...) ``node`` served for other nodes."""
    with cl[node].shell() as sh:
        return ask(sh, f"stats(0.1)['metrics']['cluster_events_total'].get({what!r}, 0)")


def test_groups_homed_on_two_nodes_are_listed_typed_to_and_read_from_any_node(cl, ask):
    a, b, c = cl.names
    ann, bea = cl.homed(a, "gann")[0], cl.homed(b, "gbea")[0]
    cid, cyd = cl.homed(c, "gcid", 2)
    cl[a].register(ann, bea, cid, cyd)
    an, be, ci, cy = cl[b].client(ann), cl[c].client(bea), cl[a].client(cid), cl[a].client(cyd)
    g1 = an.group_create("one", [bea, cid, cyd])   # lives where ann is connected: b
    g2 = be.group_create("two", [ann])             # and this one on c
    assert (cl.map.home(g1), cl.map.home(g2)) == (b, c)
    take(an, 2, ("group_event",)), take(be, 2, ("group_event",))
    take(ci, 1, ("group_event",)), take(cy, 1, ("group_event",))

    # group_list, asked on b: every group of ann, wherever it lives
    assert sorted((g["group"], g["name"], g["size"]) for g in an.group_list()) == sorted(
        [(g1, "one", 4), (g2, "two", 2)])
    assert [g["group"] for g in ci.group_list()] == [g1]

    # the fan-out: one hop to each node holding members (cid and cyd are both homed on c)
    before = served(cl, ask, c, "call:put_group")
    an.send(None, "hello", id="h1", group=g1)
    assert served(cl, ask, c, "call:put_group") == before + 1
    got = {u: take(cli, 1, ("msg",))[0]["id"] for u, cli in ((bea, be), (cid, ci), (cyd, cy))}
    assert got == {bea: "h1", cid: "h1", cyd: "h1"}

    # typing in g1 from a (cid's session): its home b relays, one cast to c for both members there
    before = served(cl, ask, c, "cast:relay")
    ci.typing(group=g1)
    for member in (an, be, cy):
        assert take(member, 1, ("typing",))[0] == {"type": "typing", "from": cid, "state": "typing", "group": g1}
    assert served(cl, ask, c, "cast:relay") == before + 1
    assert quiet(ci) == []

    # a change: its event goes to c for both members there in one request too
    before = served(cl, ask, c, "call:put_each")
    an.group_rename(g1, "uno")
    for member in (be, ci, cy):
        assert take(member, 1, ("group_event",))[0]["name"] == "uno"
    assert served(cl, ask, c, "call:put_each") == before + 1

    # a read sent on c (bea's node) for a group homed on b: checked and answered there
    be.read(ann, ["h1"], group=g1)
    receipts = take(an, 4, ("receipt",))   # ✓✓ from each member, and the read
    assert ("read", ["h1"], bea, g1) in [(r["status"], r["ids"], r["from"], r["group"]) for r in receipts]
    with pytest.raises(ServerError, match="not_member"):
        cy.read(bea, ["x"], group=g2)               # cyd is not in g2 (homed on c, asked on a)
    with pytest.raises(ServerError, match="not_delivered"):
        ci.read(ann, ["never-sent"], group=g1)
    for client in (an, be, ci, cy):
        client.close()


def ask_ok(node, user):
    """True when ``user`` logs in on ``node``."""
    try:
        node.client(user).close()
        return True
    except ServerError:
        return False


def whatsupctl(node, *args):
    """``whatsupctl --data-dir <node's> ARGS --json``, run as the operator does."""
    out = subprocess.run([os.path.join(ROOT, "bin", "whatsupctl"), "--data-dir", node.data_dir, *args, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)


def test_a_ban_and_a_retired_name_hold_on_every_node(cl):
    a, b, c = cl.names
    bad, gone = cl.homed(a, "bbad")[0], cl.homed(b, "bgone")[0]
    keeper, friend = cl.homed(a, "bkeep")[0], cl.homed(c, "bfriend")[0]
    cl[c].register(bad, gone, keeper, friend)

    # banned by the operator of c, while connected to b: the home (a) closes that session
    with cl[b].client(bad) as session:
        assert whatsupctl(cl[c], "users", "ban", bad, "--reason", "spam")["reason"] == "spam"
        assert closed_with(session) == "banned"
    for name in cl.names:
        with pytest.raises(ServerError, match="banned"):
            cl[name].client(bad)
    assert whatsupctl(cl[b], "users", "unban", bad)["was_banned"] is True
    with cl[c].client(bad) as session:   # a new password set on b closes it on c
        assert whatsupctl(cl[b], "users", "set-password", bad, "--password", "pw-bbad-new")["sessions_closed"] == 1
        assert closed_with(session) == "password_changed"
    with cl[a].client(bad, "pw-bbad-new") as session:
        assert whatsupctl(cl[c], "users", "kick", bad)["sessions_closed"] == 1
        assert closed_with(session) == "kicked"

    # deleted while connected to c (home b): a group on a loses them, a block on c of them goes
    with cl[a].client(keeper) as ke, cl[c].client(friend) as fr, cl[c].client(gone) as go:
        gid = ke.group_create("stay", [gone, friend])
        fr.block(gone)
        assert go.delete_account(f"pw-{gone}")["type"] == "ok"
        assert ke.group_info(gid)["members"] == [keeper, friend]
        assert fr.blocked() == []
    for name in cl.names:
        with cl[name].client() as anyone:
            with pytest.raises(ServerError, match="user_taken"):
                anyone.register(gone, "pw-again-123")
        with pytest.raises(ServerError, match="auth_failed"):
            cl[name].client(gone)


def test_a_companion_linked_on_another_node_than_the_primary_and_the_home(cl, ask):
    a, b, c = cl.names
    mia, pia = cl.homed(a, "dmia")[0], cl.homed(c, "dpia")[0]
    cl[b].register(mia, pia)
    phone, peer = cl[b].client(mia), cl[a].client(pia)   # mia homed on a, her phone on b
    code = phone.link_code()                             # kept by her home, a
    with Client(cl[c].server) as new:                    # the new device, on c
        laptop, token = new.link(mia, code, "laptop")
    with Client(cl[b].server) as again, pytest.raises(ServerError, match="bad_link_code"):
        again.link(mia, code, "stolen")                  # single-use on every node
    lap = Client(cl[c].server)
    lap.login(mia, device=laptop, token=token)           # the token is checked on c
    assert [(d["device"], d["online"]) for d in phone.devices()] == [(0, True), (laptop, True)]

    # to mia: on both devices, ✓✓ once, and message info per device (asked on a, answered by a)
    peer.send(mia, "to both", id="p1")
    assert [m["id"] for m in msgs(collect(phone, n_msgs(1)))] == ["p1"]
    assert [m["id"] for m in msgs(collect(lap, n_msgs(1)))] == ["p1"]
    assert [f["ids"] for f in receipts(collect(peer, lambda fs: receipts(fs, "delivered")), "delivered")] == [["p1"]]
    phone.ping(), lap.ping()
    assert info(peer, mia, "p1") == {0: True, laptop: True}

    # from the laptop (on c): the phone (on b) gets its self copy; a read from the phone reaches the laptop
    lap.send(pia, "from the laptop", id="l1")
    synced = msgs(collect(phone, n_msgs(1)))
    assert [(m["id"], m["to"], m["device"]) for m in synced] == [("l1", pia, laptop)]
    phone.read(pia, ["p1"])
    got = receipts(collect(lap, lambda fs: receipts(fs, "read")), "read")
    assert [(f["ids"], f["to"], f["device"]) for f in got] == [(["p1"], pia, 0)]
    gid = phone.group_create("pair", [pia])   # lives on b; mia's home is a; her laptop writes from c
    assert cl.map.home(gid) == b
    take(peer, 1, ("group_event",))
    lap.send(None, "in the group", id="g1", group=gid)
    for device in (peer, phone):   # the phone gets her own copy (her other device shows the group too)
        got = [m for m in msgs(collect(device, lambda fs: any("group" in f for f in msgs(fs)))) if "group" in m]
        assert [(m["id"], m["from"], m["group"]) for m in got] == [("g1", mia, gid)]
    assert phone.send_history(laptop, b"old chats")["type"] == "ok"
    assert [f["bundle"] for f in collect(lap, lambda fs: any(f["type"] == "history" for f in fs))
            if f["type"] == "history"] == [b"old chats"]

    # unlinked from the phone (on b): the laptop's session (on c) closes, its token works nowhere
    phone.unlink(laptop)
    assert closed_with(lap) == "unlinked"
    for name in cl.names:
        with Client(cl[name].server) as c2, pytest.raises(ServerError, match="auth_failed"):
            c2.login(mia, device=laptop, token=token)

    # a node whose copy of the row lags behind (dropped here by hand): the home checks the token
    with Client(cl[a].server) as new:
        tablet, tablet_token = new.link(mia, phone.link_code(), "tablet")
    with cl[b].shell() as sh:
        assert ask(sh, f"node.accounts.companions({mia!r}, None) or node.accounts.rows({mia!r})") is None
    with Client(cl[b].server) as tab:
        assert tab.login(mia, device=tablet, token=tablet_token)["device"] == tablet
    with Client(cl[b].server) as tab, pytest.raises(ServerError, match="auth_failed"):
        tab.login(mia, device=tablet, token=token)
    for client in (phone, peer):
        client.close()


def test_a_node_whose_copy_missed_a_change_learns_it_again_when_redis_comes_back(cl, ask):
    """Redis may lose its last second at a crash, with it a change a home sent every node (an
    unban here, put back by hand as if lost): once Redis is back every node learns again."""
    a, b, c = cl.names
    lucky = cl.homed(a, "rlucky")[0]
    cl[c].register(lucky)
    with cl[b].shell() as sh:
        ask(sh, f"node.lifecycle.bans.update({{{lucky!r}: {{'reason': 'lost unban', 'by': 'x', 'at': 0}}}}) or 1")
    with pytest.raises(ServerError, match="banned"):
        cl[b].client(lucky)
    cl[a].client(lucky).close()   # its home knows better
    cl.redis.kill()
    cl.redis.start()
    wait_for(lambda: cl[b].log().count("redis: reading the inbox again") >= 1, "b did not read its inbox again")
    wait_for(lambda: ask_ok(cl[b], lucky), f"b still refuses {lucky}")
