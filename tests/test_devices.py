"""Several devices per user against a real whatsupd (docs/PROTOCOL.md, "Devices")."""
import time

import pytest

from whatsup.client import Client, Closed, ServerError
from whatsup.testing import closed_with


def link(server, user, name):
    """Link a new companion to ``user`` with a code from their logged-in primary; (id, token)."""
    with server.client(user) as primary, Client(server.server) as new:
        return new.link(user, primary.link_code(), name)


def companion(server, user, device, token, **opts):
    c = Client(server.server, **opts)
    c.login(user, device=device, token=token)
    return c


def info(client, to, cid):
    """Message info as {device: delivered}."""
    return {d["device"]: d["delivered"] for d in client.info(to, cid)}


def msgs(frames):
    return [f for f in frames if f["type"] == "msg"]


def collect(client, done, timeout=15.0):
    """Frames from ``client`` until ``done(frames)`` holds; fails after ``timeout`` seconds."""
    frames, deadline = [], time.monotonic() + timeout
    while not done(frames):
        frame = client.recv(max(0.0, deadline - time.monotonic()))
        assert frame is not None, f"{client.user}: not there yet after {timeout}s: {frames[-3:]}"
        frames.append(frame)
    return frames


def queued(server, user, timeout=10.0):
    """How many items offd holds for ``user`` once the deletes the last acks cause are written
    (they ride in a later commit): polled until 0 or ``timeout``."""
    deadline = time.monotonic() + timeout
    with server.shell() as sh:
        while True:
            n = int(sh.run(f"len(offd.items({user!r}))")[0].strip())
            if n == 0 or time.monotonic() > deadline:
                return n
            time.sleep(0.1)


def n_msgs(n):
    return lambda frames: len(msgs(frames)) >= n


def receipts(frames, status):
    return [f for f in frames if f["type"] == "receipt" and f["status"] == status]


def test_every_device_gets_every_message_once_in_order_ticks_and_reads_sync(server):
    server.register("alice", "bob")
    laptop, laptop_token = link(server, "bob", "laptop")
    tablet, tablet_token = link(server, "bob", "tablet")
    assert (laptop, tablet) == (1, 2)
    alice = server.client("alice")
    phone = server.client("bob")
    lap = companion(server, "bob", laptop, laptop_token)  # the tablet stays offline
    ids = [f"m{i}" for i in range(20)]
    for i in ids:
        alice.send_nowait("bob", f"body {i}", id=i)
    on_phone = msgs(collect(phone, n_msgs(20)))
    on_laptop = msgs(collect(lap, n_msgs(20)))
    assert [m["id"] for m in on_phone] == ids and [m["id"] for m in on_laptop] == ids
    frames = collect(alice, lambda fs: len([f for f in fs if f["type"] == "sent"]) == 20 and
                     len([i for f in receipts(fs, "delivered") for i in f["ids"]]) >= 20)
    delivered = [i for f in receipts(frames, "delivered") for i in f["ids"]]
    assert sorted(delivered) == sorted(ids)  # ✓✓ once, at the first device's ack
    phone.ping(), lap.ping()  # their acks are in
    assert alice.info("bob", "m0") == [{"device": 0, "delivered": True}, {"device": laptop, "delivered": True},
                                       {"device": tablet, "delivered": False}]  # message info
    with pytest.raises(ServerError, match="unknown_message"):
        alice.info("bob", "never-sent")
    tab = companion(server, "bob", tablet, tablet_token)
    assert tab.last_login["queued"] == 20 and tab.last_login["device"] == tablet
    assert [m["id"] for m in msgs(collect(tab, n_msgs(20)))] == ids
    tab.ping()
    assert all(d["delivered"] for d in alice.info("bob", "m19"))
    assert not any(f["type"] == "receipt" for f in alice.drain(0.3))  # no second ✓✓

    # what bob sends from the laptop reaches alice and bob's other devices, not the laptop again
    lap.send("alice", "from my laptop", id="r1")
    assert [m["id"] for m in msgs(collect(alice, n_msgs(1)))] == ["r1"]
    for device in (phone, tab):
        synced = msgs(collect(device, n_msgs(1)))
        assert [(m["id"], m["from"], m["to"], m["device"]) for m in synced] == [("r1", "bob", "alice", laptop)]
    assert msgs(lap.drain(0.3)) == []

    # read on the tablet reaches alice and bob's phone and laptop
    tab.read("alice", ids[:3])
    assert [f["ids"] for f in receipts(collect(alice, lambda fs: receipts(fs, "read")), "read")] == [ids[:3]]
    for device in (phone, lap):
        got = receipts(collect(device, lambda fs: receipts(fs, "read")), "read")
        assert [(f["status"], f["ids"], f["to"], f["device"]) for f in got] == [("read", ids[:3], "alice", tablet)]
    for c in (alice, phone, lap, tab):
        c.close()


def test_a_second_login_of_one_device_replaces_only_that_device(server):
    server.register("bob")
    laptop, token = link(server, "bob", "laptop")
    phone = server.client("bob")
    first = companion(server, "bob", laptop, token)
    second = companion(server, "bob", laptop, token)
    assert closed_with(first) == "replaced"
    assert phone.ping()["type"] == "pong" and second.ping()["type"] == "pong"
    listed = {d["device"]: d for d in phone.devices()}
    assert listed[0]["online"] and listed[laptop]["online"] and listed[laptop]["name"] == "laptop"
    phone.close()
    second.close()


def test_the_password_alone_cannot_act_as_a_companion(server):
    server.register("bob")
    laptop, token = link(server, "bob", "laptop")
    with Client(server.server) as c:
        with pytest.raises(ServerError, match="auth_failed"):
            c.login("bob", password="pw-bob", device=laptop)
        with pytest.raises(ServerError, match="auth_failed"):
            c.login("bob", device=laptop, token=token[::-1])
        with pytest.raises(ServerError, match="auth_failed"):
            c.login("bob", device=0, token=token)  # the primary's credential is the password


def test_a_link_code_works_once_and_a_wrong_one_costs_a_guess(make_server):
    server = make_server({"auth.user_failures": 3, "ratelimit.link": 0})
    server.register("bob")
    with server.client("bob") as phone, Client(server.server) as new:
        code = phone.link_code()
        assert new.link("bob", code, "laptop")[0] == 1
        with pytest.raises(ServerError, match="bad_link_code"):
            new.link("bob", code, "tablet")                       # used up
        for guess in ("WRONGCODE", "ANOTHER1"):
            with pytest.raises(ServerError, match="bad_link_code"):
                new.link("bob", guess, "tablet")
        with pytest.raises(ServerError, match="too_many_attempts"):
            new.link("bob", phone.link_code(), "tablet")          # bob's name is out of guesses now


def test_a_link_code_expires(make_server):
    server = make_server({"devices.link_ttl": 5.0})
    server.register("bob")
    with server.client("bob") as phone, Client(server.server, timeout=15) as new:
        code = phone.link_code()
        time.sleep(5.2)
        with pytest.raises(ServerError, match="bad_link_code"):
            new.link("bob", code, "laptop")


def test_the_fifth_companion_is_refused_with_device_limit(server):
    server.register("bob")
    assert [link(server, "bob", f"d{i}")[0] for i in range(3)] == [1, 2, 3]
    with server.client("bob") as primary, Client(server.server) as new:
        code = primary.link_code()  # issued with 3 companions
        assert new.link("bob", code, "d3")[0] == 4
        with pytest.raises(ServerError, match="device_limit"):
            primary.link_code()  # no code is issued for a 5th: no new device would get past link


def test_an_unlinked_device_is_closed_cannot_log_in_and_holds_nothing(server):
    server.register("alice", "bob")
    laptop, token = link(server, "bob", "laptop")
    lap = companion(server, "bob", laptop, token)
    lap.close()
    with server.client("alice") as alice:
        for i in range(5):
            alice.send("bob", f"m{i}")
    with server.client("bob") as phone:
        collect(phone, n_msgs(5))
        lap = companion(server, "bob", laptop, token, auto_ack=False)
        with pytest.raises(ServerError, match="primary_device"):
            phone.unlink(0)
        phone.unlink(laptop)
        assert closed_with(lap) == "unlinked"
        with pytest.raises(ServerError, match="unknown_device"):
            phone.unlink(laptop)
        assert [d["device"] for d in phone.devices()] == [0]
    with Client(server.server) as c, pytest.raises(ServerError, match="auth_failed"):
        c.login("bob", device=laptop, token=token)
    assert queued(server, "bob") == 0  # the laptop held them: gone


def test_the_operator_lists_and_unlinks_devices(server):
    server.register("bob")
    laptop, token = link(server, "bob", "laptop")
    lap = companion(server, "bob", laptop, token)
    with server.shell() as sh:
        assert "1:" in sh.run("where('user', 'bob')['devices']")[0]
        assert "'bob/1'" in sh.run("[r['who'] for r in ps(kind='session')]")[0]  # which device, in ps()
        assert sh.run("unlink('bob', 1)")[0].strip() == "True"
    assert closed_with(lap) == "unlinked"
    with pytest.raises(Closed):
        lap.ping()


def test_a_group_message_from_one_device_reaches_the_senders_other_devices(server):
    server.register("alice", "bob")
    laptop, token = link(server, "bob", "laptop")
    with server.client("alice") as alice, server.client("bob") as phone:
        gid = phone.group_create("climbing", ["alice"])
        lap = companion(server, "bob", laptop, token)
        lap.drain(0.3)
        phone.drain(0.3)
        phone.send(None, "belay at 6?", group=gid, id="g1")
        assert [(m["from"], m["id"]) for m in msgs(collect(alice, n_msgs(1)))] == [("bob", "g1")]
        assert [(m["from"], m["group"], m["id"]) for m in msgs(collect(lap, n_msgs(1)))] == [("bob", gid, "g1")]
        assert msgs(phone.drain(0.5)) == []  # its own, acked and not shown again
        lap.close()


def test_a_history_bundle_reaches_only_the_device_it_is_for_once(server):
    server.register("alice", "bob")
    laptop, laptop_token = link(server, "bob", "laptop")
    tablet, tablet_token = link(server, "bob", "tablet")
    bundle = bytes(range(256)) * 100  # opaque to the server
    with server.client("bob") as phone:
        with pytest.raises(ServerError, match="unknown_device"):
            phone.send_history(7, bundle)
        assert phone.send_history(laptop, bundle)["type"] == "ok"
        with server.client("alice") as alice:
            alice.send("bob", "after the bundle", id="a1")
        assert [m["id"] for m in msgs(collect(phone, n_msgs(1)))] == ["a1"]
    with companion(server, "bob", tablet, tablet_token) as tab:
        assert [f["type"] for f in collect(tab, n_msgs(1))] == ["msg"]
    with companion(server, "bob", laptop, laptop_token) as lap:
        got = collect(lap, n_msgs(1))
        assert [f["type"] for f in got] == ["history", "msg"]
        assert got[0]["bundle"] == bundle and got[0]["device"] == 0
        lap.ping()
    assert queued(server, "bob") == 0  # every device acked what it was for


def test_presence_is_online_while_any_device_is_and_last_seen_is_the_last_to_leave(server):
    server.register("alice", "bob")
    laptop, token = link(server, "bob", "laptop")
    with server.client("alice") as alice:
        assert alice.subscribe("bob")["online"] is False
        phone = server.client("bob")
        assert alice.notice(5)["online"] is True
        lap = companion(server, "bob", laptop, token)
        phone.close()
        assert alice.notice(1.0) is None            # the laptop is still online
        lap.close()
        gone = alice.notice(5)
        assert gone["online"] is False and "last_seen" in gone


def test_a_companion_offline_past_inactive_after_is_unlinked_at_the_next_login(make_server):
    server = make_server({"devices.inactive_after": 2 / 86400})  # two seconds
    server.register("bob")
    laptop, token = link(server, "bob", "laptop")
    companion(server, "bob", laptop, token).close()
    time.sleep(2.5)
    with server.client("bob") as phone:
        assert [d["device"] for d in phone.devices()] == [0]
    with Client(server.server) as c, pytest.raises(ServerError, match="auth_failed"):
        c.login("bob", device=laptop, token=token)


def test_message_info_tells_the_sender_which_devices_have_a_message(server):
    server.register("alice", "bob", "carol")
    laptop, laptop_token = link(server, "bob", "laptop")
    tablet, tablet_token = link(server, "bob", "tablet")
    alice = server.client("alice")
    phone = server.client("bob")
    alice.send("bob", "hello", id="m1")
    phone.drain(0.5)
    assert [f["ids"] for f in alice.drain(0.5) if f["type"] == "receipt"] == [["m1"]]  # ✓✓, once
    assert info(alice, "bob", "m1") == {0: True, laptop: False, tablet: False}
    lap = companion(server, "bob", laptop, laptop_token)
    assert [m["id"] for m in msgs(lap.drain(0.5))] == ["m1"]
    assert info(alice, "bob", "m1") == {0: True, laptop: True, tablet: False}
    assert not any(f["type"] == "receipt" for f in alice.drain(0.3))  # details are asked for, not pushed
    tab = companion(server, "bob", tablet, tablet_token)
    tab.drain(0.5)
    assert info(alice, "bob", "m1") == dict.fromkeys((0, laptop, tablet), True)  # and gone from offd

    with Client(server.server) as desktop:
        new, _ = desktop.link("bob", phone.link_code(), "desktop")  # linked after m1: not listed for it
    assert set(info(alice, "bob", "m1")) == {0, laptop, tablet}
    with server.client("carol") as carol:
        for to, cid in (("bob", "m1"), ("alice", "m1"), ("bob", "nope")):  # only the sender, only to bob
            with pytest.raises(ServerError, match="unknown_message"):
                carol.info(to, cid)
        with pytest.raises(ServerError, match="unknown_user"):
            carol.info("nobody", "m1")
        phone.block("carol")
        carol.send("bob", "hi", id="c1")
        assert info(carol, "bob", "c1") == dict.fromkeys((0, laptop, tablet, new), False)  # blocked looks undelivered
    for c in (alice, phone, lap, tab):
        c.close()
