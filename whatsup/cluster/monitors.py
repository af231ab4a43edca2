"""Monitors of processes on other nodes (Erlang's ``monitor/2`` across nodes).

``table.monitor(pid, watcher)`` of a pid on another node lands here
(``ProcessTable.remote``), so callers never branch on local or remote. The
watcher learns, once, ``("DOWN", ref, pid, reason)`` (a callable watcher gets
``(pid, reason)``):

* the exit reason, when the process exits;
* ``noproc``, when it was gone already (or was a pid of an earlier boot of its node);
* ``noconnection``, when its node's lease lapses or its boot epoch changes (it
  died, restarted, or is cut off from Redis): the process may still run, but
  nothing reaches it; a monitor of a pid whose node is down fires so at once.

Each end keeps a table: the watching node the monitors it holds, the node of
the process the local monitor standing in for each. Requests and DOWNs travel
as casts through the inboxes (whatsup/cluster/link.py). When Redis answers
again after failing it may have lost its last second, a request or a DOWN
with it: the watching node then asks again for every monitor it holds; the
other end ignores one it has and answers ``noproc`` for a process gone
meanwhile, so no DOWN is lost (its reason may be).
"""
NOCONNECTION, NOPROC = "noconnection", "noproc"


class Monitors:
    def __init__(self, link):
        self.link = link
        self.held = {}     # ref -> (pid on another node, watcher): monitors this node holds
        self.serving = {}  # (watching node, its epoch, ref) -> (our pid, our local ref)
        link.services.update({"monitor": self._monitor, "demonitor": self._demonitor, "down": self._down})
        link.watchers.append(self._node_changed)
        link.reconnected.append(self._ask_again)

    def __repr__(self):
        return f"<Monitors held={len(self.held)} serving={len(self.serving)}>"

    # --- the watching node -------------------------------------------------------------------

    def monitor(self, pid, watcher, ref):
        link = self.link
        if pid.node not in link.live:
            return link.table.tell(watcher, ref, pid, NOCONNECTION)
        self.held[ref] = (pid, watcher)
        link.cast(pid.node, "monitor", link.node, link.epoch, ref, pid, link.live[pid.node])

    def demonitor(self, pid, ref):
        link = self.link
        if self.held.pop(ref, None) is not None and pid.node in link.live:
            link.cast(pid.node, "demonitor", link.node, link.epoch, ref)

    def _down(self, epoch, ref, pid, reason):
        """The DOWN of a monitor we hold (of our boot ``epoch``)."""
        entry = self.held.pop(ref, None) if epoch == self.link.epoch else None
        if entry is not None:
            self.link.table.tell(entry[1], ref, pid, _tupled(reason))

    def _ask_again(self):
        link = self.link
        for ref, (pid, _) in list(self.held.items()):
            if pid.node in link.live:
                link.cast(pid.node, "monitor", link.node, link.epoch, ref, pid, link.live[pid.node])

    # --- the node of the process ----------------------------------------------------------------

    def _monitor(self, node, epoch, ref, pid, pid_epoch):
        key = (node, epoch, ref)
        if key in self.serving:
            return  # asked again: it holds
        if pid_epoch != self.link.epoch:
            return self._exited(key, pid, NOPROC, force=True)
        self.serving[key] = (pid, None)
        local = self.link.table.monitor(pid, lambda p, reason: self._exited(key, p, reason))
        if key in self.serving:
            self.serving[key] = (pid, local)

    def _exited(self, key, pid, reason, force=False):
        """Tell the watching node (its boot of ``key``: a later boot drops it) that ``pid`` ended."""
        node, epoch, ref = key
        if self.serving.pop(key, None) is not None or force:
            self.link.cast(node, "down", epoch, ref, pid, reason)

    def _demonitor(self, node, epoch, ref):
        entry = self.serving.pop((node, epoch, ref), None)
        if entry is not None and entry[1] is not None:
            self.link.table.demonitor(*entry)

    # --- a node went down ---------------------------------------------------------------------

    def _node_changed(self, node, epoch, up):
        if up:
            return
        table = self.link.table
        for ref, (pid, watcher) in list(self.held.items()):
            if pid.node == node:
                del self.held[ref]
                table.tell(watcher, ref, pid, NOCONNECTION)
        for key, (pid, local) in list(self.serving.items()):
            if key[:2] == (node, epoch):
                del self.serving[key]
                if local is not None:
                    table.demonitor(pid, local)


def _tupled(reason):
    """An exit reason as it left: the wire makes tuples lists (pids excepted)."""
    return tuple(_tupled(r) for r in reason) if isinstance(reason, list) else reason
