"""Password hashing admission (whatsup/c2s/admission.py): the pure rules with a fake clock, then a
real node under a login storm from many loopback addresses (docs/RELIABILITY.md, "Hostile traffic")."""
import socket
import threading

import pytest

from whatsup import protocol
from whatsup.c2s.admission import Admission, KnownLogins, Refused, prefix
from whatsup.client import Client, ServerError
from whatsup.testing import FakeClock


def test_networks_are_slash_24_for_ipv4_and_slash_56_for_ipv6():
    assert prefix("127.0.0.7") == prefix("127.0.0.200") == "127.0.0.0/24"
    assert prefix("127.1.0.7") != prefix("127.0.0.7")
    assert prefix("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert prefix("2001:db8:0:12ff::1") == prefix("2001:db8:0:1200::9") == "2001:db8:0:1200::/56"


def test_admission_refuses_at_once_past_each_bound_with_a_retry_after():
    adm = Admission(workers=1, max_waiting=3, per_ip=2, per_prefix=3)
    first = adm.enter("10.0.0.1")
    assert first.running
    adm.enter("10.0.0.1")  # waits
    with pytest.raises(Refused) as per_ip:
        adm.enter("10.0.0.1")
    adm.enter("10.0.0.2")
    with pytest.raises(Refused) as per_prefix:
        adm.enter("10.0.0.3")
    adm.enter("10.9.0.1")
    with pytest.raises(Refused) as node_wide:
        adm.enter("10.8.0.1")  # three wait already
    for refused in (per_ip, per_prefix, node_wide):
        assert refused.value.code == "busy" and refused.value.retry_after >= 0.5
    assert adm.refused == 3


def test_waiting_checks_are_served_round_robin_by_network_and_a_cancelled_one_frees_its_place():
    clock = FakeClock()
    adm = Admission(workers=1, max_waiting=100, per_ip=100, per_prefix=100, clock=clock)
    running = adm.enter("10.0.0.1")
    flood = [adm.enter(f"10.0.0.{i}") for i in range(2, 12)]
    late = adm.enter("192.168.5.5")
    gone = adm.enter("172.16.0.1")
    assert adm.leave(gone) is None  # gave up waiting: nobody runs in its place, the worker is busy
    clock.now += 0.05
    served = [adm.leave(running)]
    while served[-1] is not None:
        served.append(adm.leave(served[-1]))
    assert served[:3] == [flood[0], late, flood[1]]  # the late network's turn comes second
    assert served[3:-1] == flood[2:]
    assert adm.running == adm.waiting == 0 and not adm.by_ip and not adm.by_prefix
    assert adm.service < 0.1  # the measured hash times (50 ms, then 0) pulled the estimate down


def test_known_logins_let_the_last_good_password_in_until_it_expires_or_is_forgotten():
    clock = FakeClock()
    known = KnownLogins(size=2, ttl=60.0, clock=clock)
    known.remember("alice", "pw-alice")
    assert known.check("alice", "pw-alice") and not known.check("alice", "pw-wrong")
    assert not known.check("bob", "pw-alice")
    known.remember("bob", "pw-bob")
    known.remember("carol", "pw-carol")  # over size: alice, the oldest, goes
    assert not known.check("alice", "pw-alice") and known.check("bob", "pw-bob")
    known.forget("bob")
    assert not known.check("bob", "pw-bob")
    clock.now += 61
    assert not known.check("carol", "pw-carol") and len(known) == 0
    off = KnownLogins(size=0, ttl=60.0, clock=clock)
    off.remember("alice", "pw-alice")
    assert not off.check("alice", "pw-alice")


# --- a real node ----------------------------------------------------------------------------

def raw_login(server, source, user, password):
    """One connection from ``source``: hello, login; returns the login's answer (error code or ok)."""
    c = Client(server.server, source=source, timeout=30)
    try:
        return c.request({"type": "login", "user": user, "password": password})["type"]
    except ServerError as exc:
        return exc.code
    finally:
        c.close()


def test_a_login_storm_from_many_addresses_gets_busy_at_once_while_known_and_other_users_get_in(make_server):
    server = make_server({"accounts.scrypt_n": 2 ** 14, "accounts.hash_threads": 1, "auth.checks_per_ip": 2,
                          "auth.checks_per_prefix": 4, "auth.max_waiting": 8, "auth.ip_failures": 0,
                          "auth.prefix_failures": 0})
    server.register("alice", "bob")
    with server.client("alice"):  # alice logged in lately: her password is remembered
        pass
    answers, stop = [], threading.Event()

    def storm(source):
        n = 0
        while not stop.is_set():
            n += 1
            answers.append(raw_login(server, source, f"nobody{n}", "pw-guess-guess"))

    threads = [threading.Thread(target=storm, args=(f"127.0.0.{i}",), daemon=True) for i in range(2, 22)]
    for t in threads:
        t.start()
    try:
        while answers.count("busy") < 20:
            threading.Event().wait(0.05)
        during = [raw_login(server, "127.1.0.1", "alice", "pw-alice") for _ in range(5)]
        other = raw_login(server, "127.2.0.1", "bob", "pw-bob")  # not remembered: hashed, in its turn
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert during == ["ok"] * 5 and other == "ok"
    assert set(answers) <= {"busy", "auth_failed"}
    with server.shell() as sh:
        hits, ok = sh.run("node.accounts.known.hits")
    assert ok and int(hits) >= 5
    assert "Traceback" not in server.log()


def test_registrations_are_limited_per_address(make_server):
    server = make_server({"auth.ip_registrations": 3})
    with Client(server.server, source="127.0.0.2") as c:
        for user in ("r1", "r2", "r3"):
            c.register(user, "pw-long-enough")
        with pytest.raises(ServerError) as refused:
            c.register("r4", "pw-long-enough")
    assert refused.value.code == "too_many_attempts" and refused.value.frame["retry_after"] > 0
    with Client(server.server, source="127.0.0.3") as c:
        assert c.register("r4", "pw-long-enough")["type"] == "ok"


def test_connections_not_logged_in_are_capped_per_address_and_per_network(make_server):
    server = make_server({"server.unauthenticated_per_ip": 3, "server.unauthenticated_per_prefix": 5})
    server.register("carol")
    held = []

    def connect(source):
        sock = socket.create_connection(server.address, timeout=10, source_address=(source, 0))
        held.append(sock)
        sock.sendall(protocol.encode({"type": "ping", "ref": 1}))
        frame = read_frame(sock)
        return frame.get("code", frame["type"])

    assert [connect("127.0.0.2") for _ in range(4)] == ["pong"] * 3 + ["too_many_connections"]
    assert [connect("127.0.0.3") for _ in range(3)] == ["pong"] * 2 + ["too_many_connections"]
    assert connect("127.0.0.4") == "too_many_connections"  # its network holds 5 already
    assert connect("127.1.0.1") == "pong"
    for sock in held:
        sock.close()
    held.clear()
    for _ in range(200):  # until the node has seen the closes
        if connect("127.0.0.2") == "pong":
            break
        threading.Event().wait(0.05)
    with Client(server.server, source="127.0.0.2") as c:
        c.login("carol", "pw-carol")
        crowd = [connect("127.0.0.2") for _ in range(3)]
    assert crowd == ["pong", "pong", "too_many_connections"]  # carol's session no longer counts
    for sock in held:
        sock.close()


def read_frame(sock):
    decoder = protocol.FrameDecoder(1 << 20)
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        frames = decoder.feed(data)
        if frames:
            return frames[0]
