"""Hot code reload through the shell: same connections, new code, nothing lost; a bad module changes nothing."""
import os
import subprocess
import sys
import time

import pytest

from reloading import Chatter, copy_package, upgrade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def copy(tmp_path):
    """A temp copy of the package the server runs from, so the test can rewrite its modules."""
    return copy_package(tmp_path / "pkg")


def test_reload_swaps_live_sessions_to_new_code_without_a_disconnect_or_a_lost_message(
        make_server, copy, ask):
    server = make_server(env={"PYTHONPATH": str(copy), "PYTHONSAFEPATH": "1"})
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    session_py = copy / "whatsup" / "c2s" / "session.py"
    with server.shell() as sh:
        assert ask(sh, "__import__('whatsup').__file__").startswith(str(copy))
        pids = ask(sh, "[str(sm.lookup(u)) for u in ('alice', 'bob')]")
        gone = ask(sh, "node.counters['disconnections']")
        assert "vsn" not in bob.ping()
        chatter = Chatter(alice)
        chatter.start()
        chatter.wait_for(20)
        upgrade(session_py)
        deploy = run(os.path.join(ROOT, "ops", "deploy.sh"), "--socket", server.shell_socket, "whatsup.c2s.session")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "reloaded whatsup.c2s.session" in deploy.stdout and "0 kept the old code" in deploy.stdout
        seen = len(chatter.ids)
        chatter.wait_for(seen + 20)  # the same connection keeps going on the new code
        chatter.stop.set()
        chatter.join(30)
        assert chatter.error is None
        assert bob.ping()["vsn"] == 2 and alice.ping()["vsn"] == 2
        assert ask(sh, "[str(sm.lookup(u)) for u in ('alice', 'bob')]") == pids
        assert ask(sh, "[(i(u)['vsn'], state(u).upgraded_from) for u in ('alice', 'bob')]") == [(2, 1)] * 2
        assert ask(sh, "node.counters['disconnections']") == gone
        with server.client("carol", register=True) as carol:  # new connections start on the new code
            assert carol.ping()["vsn"] == 2
        got = []
        while len(got) < len(chatter.ids):
            frame = bob.recv(10)
            assert frame is not None, f"bob got {len(got)} of {len(chatter.ids)}"
            if frame["type"] == "msg":
                got.append(frame["id"])
        assert got == chatter.ids

        # a module that does not load changes nothing: the v2 code keeps serving
        good = session_py.read_text()
        for broken, error in [(good + "\ndef broken(:\n", "SyntaxError"),
                              (good + "\nraise RuntimeError('boom at import')\n", "boom at import")]:
            session_py.write_text(broken)
            out = run(sys.executable, os.path.join(ROOT, "bin", "whatsup-shell"), "--socket",
                      server.shell_socket, "-c", "reload('whatsup.c2s.session')")
            assert out.returncode == 1 and error in out.stdout
            assert "the old code keeps running everywhere" in out.stdout
            assert "whatsup/shell/" not in out.stdout  # only the module's own lines, no loader frames
            assert ask(sh, "__import__('sys').modules['whatsup.c2s.session'].Session.vsn") == 2
            assert bob.ping()["vsn"] == 2
            alice.send("bob", "after a failed reload", id=f"after-{error}")
            assert bob.recv(10)["id"] == f"after-{error}"
        assert ask(sh, "node.counters['disconnections']") == gone + 1  # carol only
    assert "hot reload of whatsup.c2s.session aborted" in server.log()


class Recorder:
    """A behaviour that logs what it handles; its first message waits for a gate."""
    vsn = 1

    @staticmethod
    def init(proc, gate):
        return {"gate": gate, "seen": []}

    @staticmethod
    def handle_info(proc, msg, state):
        if msg == "first":
            state["gate"].wait()
        state["seen"].append(msg)
        return state


def test_an_urgent_system_message_runs_after_the_message_in_hand_before_the_waiting_ones():
    import gevent
    from gevent.event import Event

    from whatsup.runtime import ProcessTable
    table, gate = ProcessTable(), Event()
    pid = table.spawn(Recorder, gate)
    for msg in ("first", "second", "third"):
        table.send(pid, msg)
    gevent.sleep(0)  # "first" is now in hand, blocked on the gate
    swap = gevent.spawn(table.sys, pid, lambda p: p.state["seen"].append("swap"), urgent=True)
    gate.set()
    swap.get(timeout=5)
    table.sys(pid, lambda p: None)
    assert table.lookup(pid).state["seen"] == ["first", "swap", "second", "third"]


def test_after_reloading_the_codec_live_sessions_still_refuse_a_bad_frame_and_go_on(server, ask):
    """Their frame decoders were built by the old module: its errors must still be caught by name."""
    import struct

    import msgpack
    server.register("alice")
    alice = server.client("alice")
    with server.shell() as sh:
        assert "reloaded whatsup.protocol" in sh.run("reload('whatsup.protocol')")[0]
        for machinery in ("whatsup.runtime.process", "whatsup.shell.helpers"):
            out, ok = sh.run(f"reload({machinery!r})")
            assert not ok and "restart the node to change it" in out
        assert ask(sh, "__import__('whatsup.c2s.session').c2s.session.ProtocolError is "
                       "type(type(state('alice').decoder)(1024).feed(b'\\x00\\x00\\x00\\x01\\x01')[0])")
    body = msgpack.packb([1, 2])
    alice.sock.sendall(struct.pack(">I", len(body)) + body)
    refused = alice.recv(10)
    assert (refused["type"], refused["code"]) == ("error", "not_a_map")
    assert alice.ping()["type"] == "pong"


def test_a_reloaded_shard_behaviour_survives_a_kill_the_supervisor_restarts_it_on_the_new_code(
        make_server, copy, ask):
    server = make_server(env={"PYTHONPATH": str(copy), "PYTHONSAFEPATH": "1"})
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    offd_py = copy / "whatsup" / "store" / "offd" / "__init__.py"
    src = offd_py.read_text()
    assert src.count("    kind = \"offd\"\n    vsn = 1\n") == 1
    offd_py.write_text(src.replace("    kind = \"offd\"\n    vsn = 1\n", "    kind = \"offd\"\n    vsn = 2\n"))
    shard_of_bob = "(lambda w: (str(w['pid']), w['up']))(where('offd', 'bob'))"
    with server.shell() as sh:
        assert "0 kept the old code" in sh.run("reload('whatsup.store.offd')")[0]
        assert set(ask(sh, "[i(p.pid)['vsn'] for p in table.processes('offd')]")) == {2}
        before, up = ask(sh, shard_of_bob)
        assert up and "killed" in ask(sh, f"kill({before!r}, 'operator test')")
        deadline = time.monotonic() + 30
        while (ask(sh, shard_of_bob)[0] == before or not ask(sh, shard_of_bob)[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        after, up = ask(sh, shard_of_bob)
        assert after != before and up
        assert ask(sh, f"i({after!r})['vsn']") == 2  # the factory starts the new code too
    assert alice.send("bob", "after the restart", id="r1")["type"] == "sent"
    assert bob.recv(10)["id"] == "r1"
    assert "operator test" in server.log()


def upgrade_services(copy):
    """Router, groups and presence v2: their service processes say vsn 2, and what they answer
    says so too (a ✓, a group_info, a presence subscription)."""
    for module, marks in [("routing/router.py", [('    kind = "router"\n', '    kind = "router"\n    vsn = 2\n'),
                                                 ('"type": "sent", "ref": ref,', '"type": "sent", "vsn": 2, "ref": ref,')]),
                          ("social/groups.py", [('    kind = "groups"\n', '    kind = "groups"\n    vsn = 2\n'),
                                                ('"type": "group_info", "ref"', '"type": "group_info", "vsn": 2, "ref"')]),
                          ("social/presence.py", [('    kind = "presence"\n', '    kind = "presence"\n    vsn = 2\n'),
                                                  ('**self.state(target, user), "ref": ref}', '**self.state(target, user), "ref": ref, "vsn": 2}')])]:
        path = copy / "whatsup" / module
        src = path.read_text()
        for old, new in marks:
            assert src.count(old) == 1, (module, old)
            src = src.replace(old, new)
        path.write_text(src)


def test_reloading_the_router_groups_and_presence_swaps_their_live_code_under_traffic_without_a_disconnect(
        make_server, copy, ask):
    server = make_server(env={"PYTHONPATH": str(copy), "PYTHONSAFEPATH": "1"})
    server.register("alice", "bob", "carol", "dave")
    alice, bob, carol, dave = (server.client(u) for u in ("alice", "bob", "carol", "dave"))
    gid = carol.group_create("g", ["bob", "dave"])
    assert "vsn" not in dave.group_info(gid) and "vsn" not in dave.subscribe("alice")
    modules = ("whatsup.routing.router", "whatsup.social.groups", "whatsup.social.presence")
    live = "[type(o) is getattr(__import__('sys').modules[m], type(o).__name__) for m, o in " \
           "zip(%r, (router, node.groups, node.presence))]" % (modules,)
    with server.shell() as sh:
        gone = ask(sh, "node.counters['disconnections']")
        old = ask(sh, "[id(type(o)) for o in (router, node.groups, node.presence)]")
        chatters = [Chatter(alice), Chatter(carol, group=gid)]
        for chatter in chatters:
            chatter.start()
            chatter.wait_for(20)
        upgrade_services(copy)
        for module in modules:
            out, ok = sh.run(f"reload({module!r})")
            assert ok and f"reloaded {module}" in out and "0 kept the old code" in out, out
        for chatter in chatters:
            chatter.wait_for(len(chatter.ids) + 20)  # the same connections go on, on the new code
            chatter.stop.set()
            chatter.join(30)
            assert chatter.error is None
        assert ask(sh, live) == [True] * 3  # the live objects run their module's new class
        assert not set(ask(sh, "[id(type(o)) for o in (router, node.groups, node.presence)]")) & set(old)
        assert {k: v for k, v in ask(sh, "[(p.kind, i(p.pid)['vsn']) for p in table.processes()]")
                if k in ("router", "groups", "presence")} == {"router": 2, "groups": 2, "presence": 2}
        assert ask(sh, "node.counters['disconnections']") == gone
        out, ok = sh.run("reload('whatsup.routing.sm')")
        assert not ok and out.strip().splitlines()[0].startswith("whatsup.routing.sm cannot be reloaded")
    assert alice.send("bob", "after")["vsn"] == 2                # the router's new code
    assert dave.group_info(gid)["vsn"] == 2                      # the groups' new code
    assert dave.subscribe("alice")["vsn"] == 2                   # presence's new code
    got = {"alice": [], "carol": []}
    while len(got["alice"]) < len(chatters[0].ids) + 1 or len(got["carol"]) < len(chatters[1].ids):
        frame = bob.recv(10)
        assert frame is not None, {k: len(v) for k, v in got.items()}
        if frame["type"] == "msg":
            got[frame["from"]].append(frame["id"])
    assert got["alice"][:-1] == chatters[0].ids and got["carol"] == chatters[1].ids


def test_reloading_a_module_whose_live_object_no_process_owns_is_refused_not_accepted_for_nothing(server):
    with server.shell() as sh:
        out, ok = sh.run("reload('whatsup.users.devices')")  # node.devices would keep its class
        assert not ok and out.strip().splitlines()[0].startswith("whatsup.users.devices cannot be reloaded")
        assert sh.run("type(node.devices) is __import__('sys').modules['whatsup.users.devices'].Devices")[0].strip() == "True"
