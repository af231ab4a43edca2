"""Monitors across nodes (whatsup/cluster/monitors.py): ``table.monitor`` of a pid on another
node learns its exit reason, ``noproc`` or, when that node dies, ``noconnection``; real nodes,
a real redis-server, a real kill -9."""
from social import wait_for

#: Runs in node a's shell: monitors that record their DOWNs in ``downs`` (callables) and in the
#: mailbox of a Recorder process (a pid watcher), as Erlang code would write either.
SETUP = ("from whatsup.testing import Recorder; downs = []; seen = []; rec = table.spawn(Recorder, seen); "
         "watch = lambda pid: table.monitor(pid, lambda p, r: downs.append((repr(p), r)))")


def pid(text):
    """The shell expression of the pid printed as ``text``."""
    node, n = text[1:-1].rsplit(".", 1)
    return f"Pid({node!r}, {n})"


def test_a_monitor_of_a_pid_on_another_node_learns_its_exit_reason_or_noconnection(make_cluster, ask):
    cl = make_cluster()
    a, b, c = cl.names
    bob, carl, cleo = cl.homed(b, "bob")[0], cl.homed(c, "carl")[0], cl.homed(c, "cleo")[0]
    cl[a].register(bob, carl, cleo)
    with cl[b].client(bob), cl[c].client(carl), cl[c].client(cleo), cl[a].shell() as sh:
        sessions = {}
        for node, user in ((b, bob), (c, carl), (c, cleo)):
            with cl[node].shell() as there:
                sessions[user] = ask(there, f"repr(sm.lookup({user!r}))")
        sh.run(SETUP)
        downs = lambda: ask(sh, "downs")  # noqa: E731
        # the process exits: the DOWN with its reason, to a callable and to a pid
        ask(sh, f"[watch({pid(sessions[bob])}), table.monitor({pid(sessions[bob])}, rec)] and None")
        with cl[b].shell() as there:
            wait_for(lambda: ask(there, "len(node.link.monitors.serving)") == 2, "b serves both monitors")
            assert "killed" in there.run(f"kill({sessions[bob]!r}, 'bye')")[0]
        wait_for(lambda: downs() == [(sessions[bob], "bye")], "the DOWN of bob's session, on a")
        wait_for(lambda: ask(sh, "[(m[0], repr(m[2]), m[3]) for m in seen]") == [("DOWN", sessions[bob], "bye")],
                 "the DOWN message in the recorder's mailbox")
        # a pid already gone: noproc; a monitor dropped before its process's node dies: no DOWN
        ask(sh, f"watch({pid(sessions[bob])}) and None")
        wait_for(lambda: downs()[1:] == [(sessions[bob], "noproc")], "noproc for a pid gone")
        ask(sh, f"table.demonitor({pid(sessions[cleo])}, watch({pid(sessions[cleo])}))")
        # its node dies (kill -9): noconnection once its lease lapses
        ask(sh, f"watch({pid(sessions[carl])}) and None")
        with cl[c].shell() as there:  # the monitor reached c before it dies; cleo's was dropped there
            wait_for(lambda: ask(there, "[repr(p) for p, _ in node.link.monitors.serving.values()]")
                     == [sessions[carl]], "c serves carl's monitor only")
        cl[c].kill()
        wait_for(lambda: downs()[2:] == [(sessions[carl], "noconnection")], "noconnection for carl's session")
        # a pid of a node that is down: noconnection at once
        ask(sh, f"watch(Pid({c!r}, 1)) and None")
        wait_for(lambda: downs()[3:] == [(f"<{c}.1>", "noconnection")], "noconnection at once")
        assert len(downs()) == 4  # cleo's monitor, dropped, never fired
        assert ask(sh, "repr(node.link.monitors)") == "<Monitors held=0 serving=0>"
        with cl[b].shell() as there:
            assert ask(there, "repr(node.link.monitors)") == "<Monitors held=0 serving=0>"
