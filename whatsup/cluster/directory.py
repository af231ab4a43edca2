"""Who is where, in Redis: node leases and boot epochs, the recorded map, user -> session.

Keys (``P`` is the map's prefix)::

    P:map                    the shard placement every node must agree on (map.fingerprint;
                             whatsup-reshard move swaps it, whatsup/cluster/move.py)
    P:boot:NODE              NODE's last boot epoch (milliseconds of the wall clock at its start, above
                             the previous one: not a Redis counter, which a lost append-only tail
                             would hand out twice)
    P:lease:NODE             NODE's epoch while it lives (SET ... PX lease; renewed every lease/3)
    P:where                  hash user -> "NODE EPOCH N": the session pid <NODE.N> of that boot
    P:at:NODE:EPOCH          the users that boot of NODE placed (what reaping walks)

An entry whose node has no lease, or a lease of another epoch, is absent:
:meth:`Directory.lookup` checks it against the live leases it is given, and
:meth:`Directory.reap` deletes the entries of a boot that ended (the node
itself at its next start, or any node that sees the lease lapse). Redis is
not the system of record: losing all of it loses placements that sessions
write again at their next login, never a message.
"""
import logging
import time

from ..runtime.process import Pid

log = logging.getLogger("whatsup.cluster")
#: Delete a placement only if it is still the one we wrote (a newer login elsewhere wins).
_FORGET = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
#: Give up a lease only if it is still ours.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
#: Record a new map (whatsup-reshard move): only in place of the old one (or none, or the new one
#: already) and only while no node holds a lease, in one step no node start can slip into.
_SWAP_MAP = """
for i = 2, #KEYS do if redis.call('EXISTS', KEYS[i]) == 1 then return KEYS[i] end end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and cur ~= ARGV[2] then return KEYS[1] end
redis.call('SET', KEYS[1], ARGV[2])
return ''
"""
REAP_SLICE = 500


class MapMismatch(Exception):
    """This node's cluster map differs from the one recorded in Redis (one line)."""


class Directory:
    def __init__(self, client, cmap, node, lease):
        self.r, self.map, self.node, self.lease = client, cmap, node, lease
        p = cmap.prefix
        self.keys = {"map": f"{p}:map", "where": f"{p}:where"}
        self.prefix = p
        self.epoch = None
        self._forget = client.register_script(_FORGET)

    def __repr__(self):
        return f"<Directory {self.node} epoch={self.epoch} lease={self.lease}s>"

    def lease_key(self, node):
        return f"{self.prefix}:lease:{node}"

    def at_key(self, node, epoch):
        return f"{self.prefix}:at:{node}:{epoch}"

    # --- boot and leases --------------------------------------------------------------

    def check_map(self):
        """Record our map if none is; MapMismatch if another one is."""
        mine = self.map.fingerprint()
        self.r.set(self.keys["map"], mine, nx=True)
        recorded = self.r.get(self.keys["map"])
        if recorded is not None and recorded.decode() != mine:
            raise MapMismatch(f"the cluster map of {self.node} differs from the one recorded in Redis "
                              f"({self.keys['map']}); every node must read the same map (see whatsup-reshard)")

    def recorded_map(self):
        raw = self.r.get(self.keys["map"])
        return raw.decode() if raw is not None else None

    def swap_map(self, old, new):
        """Record the map ``new`` in place of ``old`` (fingerprints) while every node is down (no
        lease); returns "" when done, else the key that stopped it (a lease, or the map key: another map)."""
        keys = [self.keys["map"]] + [self.lease_key(n) for n in sorted(self.map.nodes)]
        return self.r.eval(_SWAP_MAP, len(keys), *keys, old, new).decode()

    def boot(self, clock=time.time):
        """Check the map, take a new epoch, reap what our previous boot left, take the lease."""
        self.check_map()
        key = f"{self.prefix}:boot:{self.node}"
        previous = self.r.get(key)
        previous = int(previous) if previous is not None else 0
        self.epoch = max(int(clock() * 1000), previous + 1)
        self.r.set(key, self.epoch)
        if previous:
            self.reap(self.node, previous)
        self.renew()
        return self.epoch

    def renew(self):
        self.r.set(self.lease_key(self.node), self.epoch, px=int(self.lease * 1000))

    def retire(self):
        """A graceful stop: the lease goes at once, so the others stop routing here now. Only our own
        lease: a node that refused to start (another map) must not end the live node of its name's
        (tests/test_cluster_move.py found it did)."""
        if self.epoch is None:
            return
        self.r.eval(_RELEASE, 1, self.lease_key(self.node), self.epoch)
        self.reap(self.node, self.epoch)

    def leases(self):
        """{node: (epoch or None, seconds left or None)} for every node of the map."""
        pipe = self.r.pipeline(transaction=False)
        names = sorted(self.map.nodes)
        for name in names:
            pipe.get(self.lease_key(name))
            pipe.pttl(self.lease_key(name))
        got = pipe.execute()
        out = {}
        for i, name in enumerate(names):
            epoch, ttl = got[2 * i], got[2 * i + 1]
            out[name] = (int(epoch), ttl / 1000.0) if epoch is not None and ttl >= 0 else (None, None)
        return out

    # --- who is where -------------------------------------------------------------------

    def value(self, pid):
        return f"{pid.node} {self.epoch} {pid.n}"

    def place_ops(self, user, pid):
        """The commands that record ``pid`` (ours) as ``user``'s session, for a pipeline."""
        return [("HSET", self.keys["where"], user, self.value(pid)),
                ("SADD", self.at_key(self.node, self.epoch), user)]

    def leave_ops(self, user, pid):
        """The commands that forget ``pid`` as ``user``'s session unless a newer one replaced it."""
        return [("EVAL", _FORGET, 1, self.keys["where"], user, self.value(pid)),
                ("SREM", self.at_key(self.node, self.epoch), user)]

    def place(self, user, pid):
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys["where"], user, self.value(pid))
        pipe.sadd(self.at_key(self.node, self.epoch), user)
        pipe.execute()

    def leave(self, user, pid):
        """Forget ``pid`` as ``user``'s session unless a newer session replaced it."""
        self._forget(keys=[self.keys["where"]], args=[user, self.value(pid)])
        self.r.srem(self.at_key(self.node, self.epoch), user)

    def lookup(self, user, live):
        """``(node, Pid)`` of ``user``'s session, or None; ``live`` is {node: epoch} of the
        nodes whose lease holds (an entry of any other boot is absent)."""
        raw = self.r.hget(self.keys["where"], user)
        if raw is None:
            return None
        node, epoch, n = raw.decode().split(" ")
        if live.get(node) != int(epoch):
            return None
        return node, Pid(node, int(n))

    def reap(self, node, epoch):
        """Delete the placements of ``node``'s boot ``epoch`` (it ended); returns how many."""
        key, n = self.at_key(node, epoch), 0
        prefix = f"{node} {epoch} ".encode()
        cursor = 0
        while True:
            cursor, users = self.r.sscan(key, cursor, count=REAP_SLICE)
            if users:
                pipe = self.r.pipeline(transaction=False)
                for user in users:
                    pipe.hget(self.keys["where"], user)
                values = pipe.execute()
                stale = [u for u, v in zip(users, values) if v is not None and v.startswith(prefix)]
                pipe = self.r.pipeline(transaction=False)
                for user, value in zip(users, values):
                    if value is not None and value.startswith(prefix):
                        self._forget(keys=[self.keys["where"]], args=[user, value], client=pipe)
                pipe.execute()
                n += len(stale)
            if cursor == 0:
                break
        self.r.delete(key)
        if n:
            log.info("reaped %d session placements of %s (boot %d)", n, node, epoch)
        return n
