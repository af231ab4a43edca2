"""Many nodes, one service: whatsupd nodes joined through Redis (issue 15).

Redis is the transport and the directory, never the system of record: offd
stays the only durable store, and a ✓ still means "fsynced by the node that
owns the recipient's shard". Single-node whatsupd (``cluster.map`` empty) uses
none of this and needs no Redis.

* map.py        the static shard -> node map every node reads (etc/cluster.toml)
* engine.py     Redis clients on gevent sockets, explicit timeouts, no silent retries
* wire.py       what one inbox entry carries
* directory.py  boot epochs, leases, the recorded map, who is where
* inbox.py      each node's inbox stream: the reader and the pipelined writer
* link.py       pids on other nodes, requests served elsewhere, node up/down
* monitors.py   monitors of pids on other nodes: their exit, or noconnection
* homes.py      users homed on other nodes: their sessions, queues and accounts
* move.py       whatsup-reshard move: shards from one stopped node to another, verified, swapped
"""
