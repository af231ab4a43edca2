"""The cluster map: which node owns which shard of users and groups (etc/cluster.toml).

Every node of a cluster reads the same file (``cluster.map`` in its whatsupd.toml).
A user's (or group's) *home* is the node owning shard ``crc32(name) % shards``:
its account, its offd queue and its group records live there, and every request
about it goes there (whatsup/cluster/remote.py). The map is static, as WhatsApp's
cluster configuration was: moving a shard is a manual, verified operation with the
nodes stopped. What this node read is checked against the map recorded in Redis
at start (whatsup/cluster/directory.py): a node whose view differs refuses to start.

::

    redis = "redis://127.0.0.1:6379/0"   # the transport and directory (never the system of record)
    shards = 12                          # cluster shards (each node shards its own part again)
    [nodes."a@localhost"]
    listen = "127.0.0.1:7222"            # where its clients connect (for tools and people)
    shards = [0, 1, 2, 3]
"""
import json
import urllib.parse

from ..config import ConfigError, read_toml
from ..runtime.factory import shard_of


class MapError(ConfigError):
    """The map file is unreadable or inconsistent; the message is one line."""


class ClusterMap:
    def __init__(self, redis, shards, nodes, prefix="whatsup"):
        """``nodes``: name -> {"shards": [...], "listen": "host:port"}."""
        self.redis, self.shards, self.prefix = redis, shards, prefix
        self.nodes = {name: dict(spec) for name, spec in nodes.items()}
        self.owner = [None] * shards
        for name, spec in self.nodes.items():
            for s in spec.get("shards", ()):
                if not isinstance(s, int) or not 0 <= s < shards:
                    raise MapError(f"node {name}: shard {s!r} is not in 0..{shards - 1}")
                if self.owner[s] is not None:
                    raise MapError(f"shard {s} is given to both {self.owner[s]} and {name}")
                self.owner[s] = name
        missing = [s for s, o in enumerate(self.owner) if o is None]
        if missing:
            raise MapError(f"shards {missing[:10]} belong to no node")
        if urllib.parse.urlsplit(redis).scheme not in ("redis", "unix"):
            raise MapError(f"redis {redis!r} must be a redis:// or unix:// URL")

    def __repr__(self):
        return f"<ClusterMap {len(self.nodes)} nodes, {self.shards} shards, {self.redis}>"

    def home(self, entity):
        """The node owning ``entity`` (a user name or a group id)."""
        return self.owner[shard_of(entity, self.shards)]

    def listen(self, node):
        return self.nodes[node].get("listen")

    def fingerprint(self):
        """The placement as one canonical string: what every node must agree on (not listen
        addresses, which an operator may move without moving data)."""
        return json.dumps({"shards": self.shards, "owner": self.owner}, separators=(",", ":"))

    def moved(self, shards, node):
        """This map with ``shards`` given to ``node`` (whatsup-reshard move, whatsup/cluster/move.py)."""
        self.check_node(node)
        bad = [s for s in shards if not isinstance(s, int) or not 0 <= s < self.shards]
        if bad:
            raise MapError(f"shards {bad} are not in 0..{self.shards - 1}")
        nodes = {name: {**spec, "shards": [s for s in spec.get("shards", ()) if s not in shards]}
                 for name, spec in self.nodes.items()}
        nodes[node]["shards"] = sorted(set(nodes[node]["shards"]) | set(shards))
        return ClusterMap(self.redis, self.shards, nodes, self.prefix)

    def toml(self):
        return render(self.redis, self.shards, self.nodes, self.prefix)

    def check_node(self, node):
        if node not in self.nodes:
            raise MapError(f"this node ({node}, server.node) is not in the cluster map "
                           f"({', '.join(sorted(self.nodes))})")


def load(path):
    doc = read_toml(path, "cluster map")
    try:
        return ClusterMap(doc["redis"], int(doc["shards"]), doc["nodes"], doc.get("prefix", "whatsup"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MapError):
            raise MapError(f"{path}: {exc}") from None
        raise MapError(f"{path}: needs redis, shards and [nodes.NAME] tables ({exc!r})") from None


def render(redis, shards, nodes, prefix="whatsup"):
    """The TOML of a map: ``nodes`` is name -> {"listen": ..., "shards": [...]} (ops/cluster.py, tests)."""
    lines = [f'redis = "{redis}"', f"shards = {shards}", f'prefix = "{prefix}"']
    for name, spec in nodes.items():
        lines += ["", f'[nodes."{name}"]']
        if spec.get("listen"):
            lines.append(f'listen = "{spec["listen"]}"')
        lines.append(f"shards = {list(spec['shards'])}")
    return "\n".join(lines) + "\n"


def spread(names, shards):
    """Shards dealt round-robin over ``names``: {name: [shard...]}."""
    return {name: [s for s in range(shards) if s % len(names) == i] for i, name in enumerate(names)}
