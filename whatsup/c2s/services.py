"""What a session may use: the node's services, handed over once, explicitly.

A session is built with one :class:`Services` (whatsup/node.py makes it once,
at start, when the data dir's identity is known) instead of the whole node:
its fields are the session's dependencies, all of them, so a reader (or a
test, or the next node layout) sees what a connection can reach. It is
frozen: nothing is injected into it later.
"""
import collections
import dataclasses

from ..routing.router import Router
from ..routing.sm import SessionManager
from ..runtime.ratelimit import Guesses
from ..runtime.timers import Timers
from ..social.blocking import Blocks
from ..social.groups import Groups
from ..social.presence import Presence
from ..store.accounts import AccountStore
from ..store.offd import Offd
from ..users.devices import Devices
from ..users.lifecycle import Lifecycle
from ..users.push import Push
from ..users.registration import Registration
from .core import Limits
from .listener import ConnectionGate


@dataclasses.dataclass(frozen=True)
class Services:
    limits: Limits                  # the connection's rules (c2s.core)
    account_rules: dict             # [accounts] settings: names and passwords (protocol.check_account)
    server_name: str                # what ``hello`` answers
    node_id: str
    counters: collections.Counter   # the node's counters (connections, logins, error:CODE...)
    timers: Timers                  # the sessions' deadlines
    gate: ConnectionGate            # per-address limits: a login, a flood
    failed_logins: Guesses
    sm: SessionManager
    accounts: AccountStore
    registration: Registration
    lifecycle: Lifecycle
    offd: Offd
    router: Router
    groups: Groups
    presence: Presence
    blocks: Blocks
    push: Push
    devices: Devices
    homes: object = None            # in a cluster: what users homed on other nodes need (whatsup/cluster/homes.py)
