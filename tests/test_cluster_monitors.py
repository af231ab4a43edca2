"""Monitors across nodes (whatsup/cluster/monitors.py): ``table.monitor`` of a pid on another
node learns its exit reason, ``noproc`` or, when that node dies, ``noconnection``; real nodes,
a real redis-server, a real kill -9."""
import gevent

from social import wait_for
from whatsup.cluster import wire
from whatsup.cluster.monitors import Monitors
from whatsup.runtime import ProcessTable
from whatsup.testing import Recorder

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


class Wire:
    """What one node's Monitors needs of its link, with the casts it sends kept in ``sent`` until
    :func:`carry` hands them to the other node (through the wire codec, as the inboxes do)."""

    def __init__(self, table, epoch):
        self.table, self.node, self.epoch = table, table.node, epoch
        self.live, self.services, self.watchers, self.reconnected, self.sent = {}, {}, [], [], []
        self.monitors = Monitors(self)
        table.remote = self

    def cast(self, node, name, *args):
        self.sent.append((node, name, args))


def carry(links):
    """Deliver every cast in flight, in order, until none is left (letting the greenlets that
    casts start, and processes' exits, run in between)."""
    gevent.sleep(0.01)
    while any(link.sent for link in links.values()):
        for link in links.values():
            sent, link.sent = link.sent, []
            for node, name, args in sent:
                _, name, args = wire.decode(wire.encode(("cast", name, args)))
                links[node].services[name](*args)
        gevent.sleep(0.01)


def test_a_monitor_request_redis_lost_is_asked_again_and_answered_once():
    tables = {n: ProcessTable(n) for n in ("a@x", "b@x")}
    links = {n: Wire(t, 7) for n, t in tables.items()}
    for link in links.values():
        link.live = {"a@x": 7, "b@x": 7}
    a, b = links["a@x"], links["b@x"]
    downs = []
    target = tables["b@x"].spawn(Recorder, [])
    gevent.sleep(0)
    tables["a@x"].monitor(target, lambda pid, reason: downs.append(reason))
    a.sent.clear()                      # Redis lost the request
    tables["b@x"].kill(target, ("closed", "bye"))
    carry(links)
    assert downs == []                  # nobody knew
    for callback in a.reconnected:      # Redis answers again: every monitor held is asked again
        callback()
    carry(links)
    assert downs == ["noproc"]          # gone meanwhile: noproc, not silence
    assert repr(a.monitors) == repr(b.monitors) == "<Monitors held=0 serving=0>"

    other = tables["b@x"].spawn(Recorder, [])
    gevent.sleep(0)
    tables["a@x"].monitor(other, lambda pid, reason: downs.append(reason))
    carry(links)
    for callback in a.reconnected:      # asked twice while it holds: one monitor there
        callback()
    carry(links)
    assert len(b.monitors.serving) == 1
    b.services["down"](6, 1, other, "a DOWN for an earlier boot of a")  # dropped
    tables["b@x"].kill(other, ("closed", "bye"))
    carry(links)
    assert downs == ["noproc", ("closed", "bye")]  # the reason as it left, once
