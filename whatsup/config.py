"""Settings: one declaration per setting feeds the TOML loader, the CLI and etc/whatsupd.toml.

``python -m whatsup.config`` prints the commented default configuration; a test
fails when etc/whatsupd.toml drifts from it.
"""
import dataclasses
import difflib
import os
import sys
import tomllib


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str          # "section.key"
    type: type
    default: object
    doc: str
    minimum: object = None
    choices: tuple = ()  # the only values allowed, when not empty


def _default_data_dir():
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "whatsup")


SETTINGS = (
    Setting("server.listen", str, "127.0.0.1:7222", "address whatsupd accepts clients on (host:port)"),
    Setting("server.data_dir", str, "", "where accounts and the offd spool live; empty means "
            "$XDG_DATA_HOME/whatsup (~/.local/share/whatsup)"),
    Setting("server.log_level", str, "info", "how much whatsupd logs", choices=("debug", "info", "warning", "error")),
    Setting("server.log_format", str, "text", "text (for people) or json (one object per line: time, "
            "level, logger, node, pid, message, and user when a session logged it)", choices=("text", "json")),
    Setting("server.node", str, "whatsup@localhost", "this node's name; pids carry it"),
    Setting("server.max_connections", int, 50_000, "open client connections at most (all listeners); "
            "when full the node stops accepting until one ends", 1),
    Setting("server.max_connections_per_ip", int, 1000, "open connections from one client address at "
            "most; more are refused at accept time with too_many_connections", 1),
    Setting("server.unauthenticated_per_ip", int, 64, "connections from one client address not yet "
            "logged in, at most; more are refused at accept time with too_many_connections", 1),
    Setting("server.flood_closes", int, 3, "connections of one client address closed with flooding "
            "per minute (10 × this per /24 or /56 network) before its new connections are refused "
            "with too_many_connections until the count refills; 0 means no limit", 0),
    Setting("server.flood_window", float, 60.0, "seconds over which server.flood_closes are counted "
            "(the count refills over this)", 1.0),
    Setting("server.stop_sessions", float, 10.0, "seconds a graceful stop (SIGTERM) gives the sessions "
            "to say shutting_down and end, before the stores stop", 0.0),
    Setting("server.stop_timeout", float, 60.0, "seconds the supervision tree then has to stop (offd "
            "flushed, stores closed); a process that takes longer is killed", 1.0),
    Setting("server.unauthenticated_per_prefix", int, 256, "connections from one client network "
            "(/24 IPv4, /56 IPv6) not yet logged in, at most; more are refused like the above", 1),
    Setting("tls.listen", str, "", "second address for TLS clients (host:port); empty means no TLS "
            "listener (plain TCP stays for loopback use)"),
    Setting("tls.certfile", str, "", "PEM certificate chain of the TLS listener"),
    Setting("tls.keyfile", str, "", "PEM private key of the TLS listener"),
    Setting("protocol.max_frame", int, 65536, "largest frame accepted, in bytes (length header excluded)", 1024),
    Setting("protocol.max_body", int, 61440, "largest message body, in UTF-8 bytes; must leave room for "
            "the envelope below max_frame", 1),
    Setting("protocol.idle_timeout", float, 300.0, "seconds without any frame from a client before its "
            "connection is closed (clients ping every idle_timeout/3: a phone's radio wakes that often)", 1.0),
    Setting("protocol.send_timeout", float, 30.0, "seconds a device's socket may take no byte of what "
            "waits for it before the session is closed with slow_reader (its items stay in offd)", 0.1),
    Setting("protocol.login_timeout", float, 30.0, "seconds a new connection has to log in", 1.0),
    Setting("session.window", int, 1000, "items sent to a device and not yet acked, at most; flow "
            "control for spool drains and slow readers", 1),
    Setting("session.max_outbound", int, 2 ** 20, "bytes buffered for one device and not yet taken "
            "by its socket, at most: queued items are sent only into the first half; a device that "
            "lets its own replies fill the rest is closed with slow_reader (its items stay in offd)",
            4096),
    Setting("session.max_inflight", int, 1000, "requests of one session awaiting their answer (✓) at "
            "most; at the bound the session handles no more frames, and reads no more, until "
            "answers come back", 1),
    Setting("session.rate_burst", float, 5.0, "seconds of the [ratelimit] rate a client may send "
            "at once (each bucket holds rate × rate_burst frames)", 0.0),
    Setting("session.rate_strikes", int, 50, "rate_limited refusals a connection may collect (forgiven "
            "at rate_strikes/10 per second) before it is closed with flooding", 1),
    Setting("session.dedup_window", int, 4096, "client message ids remembered per sender, so a "
            "retransmission is acked again but not delivered twice (24 bytes each, plus 4 to 8 of index)", 16),
    Setting("groups.max_members", int, 1024, "members of one group at most (WhatsApp's limit)", 2),
    Setting("groups.sender_budget", int, 1 << 16, "group message copies one sender may have in flight (not yet "
            "answered); over it its session waits (stops reading) until answers come", 1),
    Setting("groups.sender_copies", float, 50000.0, "group message copies per second one sender may make, after "
            "session.rate_burst seconds' worth at once; past it its session waits (stops reading), nothing is "
            "refused: what one member can make the node queue for offline members is bounded; 0 means no limit",
            0.0),
    Setting("groups.fanout_chunk", int, 64, "group members woken (or events queued) between two yields to the hub, so "
            "a large fan-out does not stall the other sessions", 1),
    Setting("groups.process_idle", float, 10.0, "seconds a group's process waits for more operations "
            "before it stops (the next operation starts another): a quiet group costs no process", 0.1),
    Setting("groups.op_timeout", float, 60.0, "seconds a session waits for a change of a group, behind "
            "the group's earlier operations, before its device gets internal (the change may still "
            "be made)", 0.1),
    Setting("devices.max_companions", int, 4, "companion devices one user may link besides the primary "
            "(WhatsApp's limit); one more is refused with device_limit", 0),
    Setting("devices.link_ttl", float, 60.0, "seconds a link code stays valid (single-use; a user holds one "
            "at a time)", 5.0),
    Setting("devices.inactive_after", float, 30.0, "days a companion may stay offline before it is unlinked "
            "(checked when one of the user's devices logs in) and stops holding items; 0 means never", 0.0),
    Setting("ratelimit.msg", float, 500.0, "msg frames per second per connection; 0 means no limit", 0.0),
    Setting("ratelimit.read", float, 500.0, "read receipts per second per connection; 0 means no limit", 0.0),
    Setting("ratelimit.ack", float, 1000.0, "acks per second per connection (a device acks what it "
            "is sent, cumulatively); 0 means no limit", 0.0),
    Setting("ratelimit.ping", float, 10.0, "pings per second per connection, before login too "
            "(a device needs one per idle_timeout/3); 0 means no limit", 0.0),
    Setting("ratelimit.typing", float, 5.0, "typing frames per second per connection; 0 means no limit",
            0.0),
    Setting("ratelimit.link", float, 1.0, "link frames per second per connection (wrong codes also count "
            "as failed logins, auth.*); 0 means no limit", 0.0),
    Setting("ratelimit.presence_sub", float, 20.0, "presence subscriptions per second per connection; "
            "0 means no limit", 0.0),
    Setting("mailbox.session", int, 10_000, "messages queued in one session's mailbox at most; a "
            "session whose mailbox is full is closed (its items are in offd, its device retransmits "
            "what had no ✓); must exceed session.max_inflight", 64),
    Setting("auth.user_failures", int, 10, "failed logins per user name within auth.failure_window, "
            "then too_many_attempts until the window refills; 0 means no limit", 0),
    Setting("auth.ip_failures", int, 100, "failed logins per client address within "
            "auth.failure_window; 0 means no limit", 0),
    Setting("auth.prefix_failures", int, 1000, "failed logins per client network (/24 IPv4, /56 IPv6) "
            "within auth.failure_window; 0 means no limit", 0),
    Setting("auth.failure_window", float, 60.0, "seconds over which failed logins and registrations "
            "are counted", 1.0),
    Setting("auth.ip_registrations", int, 10, "registrations from one client address within "
            "auth.failure_window, then too_many_attempts; 0 means no limit", 0),
    Setting("auth.max_waiting", int, 64, "logins and registrations waiting for a password hasher, "
            "node-wide, at most; more get busy (with retry_after) at once", 1),
    Setting("auth.checks_per_ip", int, 4, "logins and registrations of one client address being "
            "hashed or waiting at once, at most; more get busy", 1),
    Setting("auth.checks_per_prefix", int, 16, "logins and registrations of one client network (/24 "
            "IPv4, /56 IPv6) being hashed or waiting at once, at most; more get busy. Waiting ones "
            "are served round-robin by network", 1),
    Setting("auth.wait_timeout", float, 30.0, "seconds an admitted login or registration may wait for a "
            "hasher before it gets busy (the queue is bounded, so this means something is stuck)", 0.1),
    Setting("auth.hash_timeout", float, 30.0, "seconds one password hash may take before the client gets "
            "busy (a hasher stuck or restarting)", 0.1),
    Setting("auth.known_logins", int, 10_000, "users whose last good password is remembered (an "
            "HMAC under a per-start key, in RAM only) so their next login needs no scrypt and "
            "no admission; 0 turns this off (see docs/RELIABILITY.md)", 0),
    Setting("auth.known_ttl", float, 3600.0, "seconds a remembered password stays usable", 1.0),
    Setting("accounts.max_username", int, 32, "characters in a user name at most (names are "
            "A-Z a-z 0-9 _ . -); register refuses longer ones with bad_username", 1),
    Setting("accounts.min_password", int, 6, "characters in a password at least; register refuses "
            "shorter ones with bad_password", 1),
    Setting("accounts.max_password", int, 256, "characters in a password at most; register refuses "
            "longer ones with bad_password, and login with a longer one fails (auth_failed) "
            "without hashing it", 1),
    Setting("accounts.scrypt_n", int, 2 ** 15, "scrypt cost parameter N for password hashes", 2),
    Setting("accounts.hash_threads", int, 2, "password hashers (a gen_factory, least-loaded dispatch), "
            "each with its own native thread, off the hub", 1),
    Setting("accounts.hash_nice", int, 10, "how much lower the hashers' CPU priority is than the "
            "hub's (nice increment of their threads): under a login storm the hub keeps a core", 0),
    Setting("accounts.shards", int, 0, "account-store shards, each its own sqlite file and writer "
            "thread; 0 means the count the data dir was written with (4 for a new one); changing it "
            "needs whatsup-reshard", 0),
    Setting("accounts.registration", str, "open", "who may register: open (anyone), invite (with a "
            "token from `whatsupctl invites create`) or closed (only the operator, `whatsupctl users "
            "register`)", choices=("open", "invite", "closed")),
    Setting("accounts.invite_days", float, 7.0, "days an invite stays valid unless `invites create "
            "--days` says otherwise", 0.0),
    Setting("accounts.user_invites", int, 0, "valid invites one user may hold at once, made with the "
            "invite_create frame (single-use, accounts.invite_days); 0 means only the operator makes "
            "invites", 0),
    Setting("accounts.name_reuse_days", float, 30.0, "days a deleted account's name cannot be "
            "registered again; 0 means at once", 0.0),
    Setting("offd.shards", int, 0, "spool shards, each with its own directory and writer thread; "
            "0 means the count the data dir was written with (4 for a new one); changing it needs "
            "whatsup-reshard", 0),
    Setting("offd.segment_bytes", int, 64 * 2 ** 20, "spool segment size at which a new segment starts", 4096),
    Setting("offd.max_queue", int, 100_000, "items queued for one user at most; senders get queue_full beyond", 1),
    Setting("offd.expiry_days", float, 30.0, "undelivered items older than this are dropped (and logged)", 0.0),
    Setting("offd.maintenance_interval", float, 10.0, "seconds between compaction and expiry passes", 0.1),
    Setting("offd.commit_interval", float, 0.002, "seconds at least between two group commits (fsyncs) "
            "of one spool shard: a busy shard gathers what arrives meanwhile into one batch, an idle one "
            "commits at once; ✓ and delivery wait up to this long more under load", 0.0),
    Setting("runtime.max_restarts", int, 5, "restarts a supervisor allows within runtime.restart_period; "
            "one more and it gives up and its own supervisor decides (the root's giving up stops the "
            "node)", 0),
    Setting("runtime.restart_period", float, 10.0, "the window, in seconds, of runtime.max_restarts", 0.1),
    Setting("runtime.retry_interval", float, 1.0, "seconds between two attempts to store a ✓✓ "
            "receipt that a restarting shard or a failing disk refused (it is never dropped)", 0.01),
    Setting("runtime.restart_wait", float, 5.0, "seconds a caller waits for a restarting shard before "
            "getting store_failed (retry)", 0.0),
    Setting("shell.listen", str, "unix:", "the operator shell, a Python REPL inside the node (arbitrary "
            "code execution): 'unix:' is <data_dir>/backdoor.sock with mode 0600, 'unix:PATH' another "
            "socket, a loopback host:port (127.0.0.0/8 or ::1; nothing else is accepted), or 'off'"),
    Setting("push.url", str, "", "push gateway URL: an HTTP POST per notification to an offline "
            "device that registered a push token (docs/PROTOCOL.md, \"Push notifications\"); empty "
            "turns push off"),
    Setting("push.include_content", bool, False, "put the newest messages' sender and text in the "
            "notification; by default it says only how many messages wait"),
    Setting("push.delay", float, 1.0, "seconds a device's first new item waits for more, so a burst "
            "becomes one notification", 0.0),
    Setting("push.timeout", float, 5.0, "seconds one POST to the gateway may take", 0.1),
    Setting("push.retries", int, 5, "attempts after a failed POST (a timeout, an error, HTTP 5xx) "
            "before the notification is dropped (counted)", 0),
    Setting("push.backoff", float, 1.0, "seconds before the first retry; doubling after each", 0.01),
    Setting("push.backoff_max", float, 300.0, "seconds between two retries at most", 0.01),
    Setting("push.breaker_failures", int, 5, "failed POSTs in a row after which nothing is sent for "
            "push.breaker_cooldown seconds (then one attempt decides)", 1),
    Setting("push.breaker_cooldown", float, 30.0, "seconds the circuit breaker stays open", 0.01),
    Setting("control.socket", str, "", "the whatsupctl control socket (a small command protocol, "
            "docs/ADMIN.md; Unix only, mode 0600): empty means <data_dir>/control.sock, 'off' none"),
    Setting("metrics.listen", str, "", "loopback host:port serving Prometheus metrics at /metrics "
            "(127.0.0.0/8 or ::1, as for shell.listen; port 0 picks a free one); empty turns them off; "
            "other hosts, and host names, are refused"),
    Setting("cluster.map", str, "", "the cluster map (see etc/cluster.toml): the nodes, the Redis URL and which "
            "node owns which shard of users and groups; server.node names this node in it. Empty means a "
            "single node, which needs no Redis"),
    Setting("cluster.timeout", float, 2.0, "seconds one Redis command (connecting included) may take; redis-py's "
            "own retries are off, the callers retry what is safe to", 0.1),
    Setting("cluster.block", float, 0.5, "seconds one read of this node's inbox stream waits for entries; must "
            "stay below cluster.timeout", 0.01),
    Setting("cluster.lease", float, 3.0, "seconds this node's lease lives in Redis (renewed every third of it): "
            "a node that has not renewed it for this long is down for the others, and counts itself cut off: "
            "what it would send to other nodes fails at once (store_failed) until a renewal goes through", 0.3),
    Setting("cluster.retry_for", float, 5.0, "seconds a write to Redis is retried while Redis is unreachable, "
            "before the requests it carries fail with store_failed (retry)", 0.0),
    Setting("cluster.request_timeout", float, 10.0, "seconds a request served by another node may wait for "
            "its answer before its client gets store_failed (retry)", 0.1),
    Setting("cluster.batch", int, 256, "inbox entries one read takes, and entries one pipeline writes, at most",
            1)
)
BY_NAME = {s.name: s for s in SETTINGS}


class ConfigError(Exception):
    """A configuration the node refuses to start with; the message is one line."""


def _section_classes():
    """One frozen dataclass per [section], a typed field per setting: ``cfg.session.window``."""
    fields = {}
    for s in SETTINGS:
        section, key = s.name.split(".", 1)
        if section in fields and section != next(reversed(fields)):  # a second [section] in the TOML
            raise ValueError(f"{s.name}: the settings of [{section}] must stand together in SETTINGS")
        fields.setdefault(section, []).append((key, s.type))
    classes = {}
    for section, keys in fields.items():
        cls = classes[section] = dataclasses.make_dataclass(f"{section.capitalize()}Settings", keys, frozen=True)
        cls.__module__ = __name__
    return classes


SECTIONS = _section_classes()


class Config:
    """Resolved and validated settings, read as ``cfg.offd.max_queue``: each [section] is a frozen
    dataclass generated from SETTINGS, so a misspelt name is an AttributeError where it is
    written, not a KeyError when it is first read."""

    def __init__(self, values):
        for section, cls in SECTIONS.items():
            setattr(self, section, cls(**{f.name: values[f"{section}.{f.name}"]
                                          for f in dataclasses.fields(cls)}))

    def __repr__(self):
        return f"<Config {self.as_dict()!r}>"

    def as_dict(self):
        """``{"section.key": value}`` of every setting."""
        return {f"{section}.{key}": value for section in SECTIONS
                for key, value in vars(getattr(self, section)).items()}

    @property
    def data_dir(self):
        return self.server.data_dir or _default_data_dir()


ENV_PREFIX = "WHATSUP_"


def env_name(name):
    """The environment variable of setting ``name``: server.data_dir is WHATSUP_SERVER__DATA_DIR."""
    section, key = name.split(".", 1)
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _setting(name, where):
    """The Setting called ``name``; an unknown one is refused in one line naming the nearest."""
    try:
        return BY_NAME[name]
    except KeyError:
        nearest = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.0)
        raise ConfigError(f"{where}: unknown setting {name!r}; did you mean {nearest[0]}?") from None


def parse(setting, text):
    """``text`` (from the command line or the environment) as a value of ``setting``'s type."""
    if setting.type is str:
        return text
    if setting.type is bool:
        word = text.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    else:
        try:
            return setting.type(text)
        except ValueError:
            pass
    raise ConfigError(f"{setting.name} must be {setting.type.__name__}, got {text!r}")


def _coerce(setting, value):
    if setting.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, setting.type) or isinstance(value, bool) != (setting.type is bool):
        raise ConfigError(f"{setting.name} must be {setting.type.__name__}, got {value!r}")
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{setting.name} must be one of {', '.join(setting.choices)}, got {value!r}")
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"{setting.name} must be at least {setting.minimum}, got {value!r}")
    return value


def read_toml(path, what="config"):
    """The TOML document at ``path``; ConfigError (one line) if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _from_file(path):
    """``[(where, name, value)]`` of the TOML file at ``path``."""
    doc = read_toml(path)
    found = []
    for section, table in doc.items():
        if not isinstance(table, dict):
            keys = {name.partition(".")[2]: name for name in BY_NAME}
            nearest = keys[difflib.get_close_matches(section, keys, n=1, cutoff=0.0)[0]]
            raise ConfigError(f"{path}: top-level key {section!r} must be in a [section]; did you mean {nearest}?")
        found += [(path, f"{section}.{key}", value) for key, value in table.items()]
    return found


def _from_env(env):
    """``[(where, name, text)]`` of the ``WHATSUP_SECTION__KEY`` variables in ``env`` (the
    client's own variables, like WHATSUP_SERVER, have no double underscore)."""
    found = []
    for var, text in sorted(env.items()):
        if var.startswith(ENV_PREFIX) and "__" in var:
            section, _, key = var[len(ENV_PREFIX):].lower().partition("__")
            found.append((f"environment {var}", f"{section}.{key}", text))
        elif var.startswith(ENV_PREFIX):  # WHATSUP_SESSION_WINDOW: a setting's name, one underscore short
            rest = var[len(ENV_PREFIX):].lower()
            meant = [f"{rest[:i]}.{rest[i + 1:]}" for i, c in enumerate(rest) if c == "_"]
            for name in (n for n in meant if n in BY_NAME):
                raise ConfigError(f"environment {var}: not a setting (one underscore); did you mean {env_name(name)}?")
    return found


def _from_sets(sets):
    """``[(where, name, text)]`` of ``--set section.key=value`` options."""
    found = []
    for item in sets:
        name, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item}: expected section.key=value")
        found.append((f"--set {item}", name.strip(), text))
    return found


def load(path=None, overrides=None, env=None, sets=()):
    """Defaults, then the TOML file at ``path``, then the ``WHATSUP_SECTION__KEY`` variables of
    ``env``, then ``sets`` (``section.key=value`` texts), then ``overrides`` (name -> value,
    None skipped): each later source wins. Raises ConfigError (one line) on anything wrong."""
    values = {s.name: s.default for s in SETTINGS}
    found = [(where, name, value, False) for where, name, value in (_from_file(path) if path else ())]
    found += [(where, name, text, True) for where, name, text in _from_env(env or {}) + _from_sets(sets)]
    found += [("", name, value, False) for name, value in (overrides or {}).items() if value is not None]
    for where, name, value, text in found:
        setting = _setting(name, where)
        try:
            values[name] = _coerce(setting, parse(setting, value) if text else value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    _check_together(values)
    return Config(values)


def _check_together(values):
    """The rules that tie settings to each other."""
    if values["protocol.max_body"] > values["protocol.max_frame"] - 512:
        raise ConfigError("protocol.max_body must be at least 512 bytes below protocol.max_frame")
    if values["session.max_outbound"] < 4 * values["protocol.max_frame"]:
        raise ConfigError("session.max_outbound must be at least 4 × protocol.max_frame")
    if values["accounts.max_password"] < values["accounts.min_password"]:
        raise ConfigError("accounts.max_password must be at least accounts.min_password")
    if values["mailbox.session"] < values["session.max_inflight"] + 64:
        raise ConfigError("mailbox.session must exceed session.max_inflight by 64 at least")
    if values["cluster.block"] >= values["cluster.timeout"]:
        raise ConfigError("cluster.block must be below cluster.timeout (a longer BLOCK is a timeout)")
    if bool(values["tls.listen"]) != bool(values["tls.certfile"] and values["tls.keyfile"]):
        raise ConfigError("tls.listen, tls.certfile and tls.keyfile go together")


def render_toml():
    """The commented default configuration, as shipped in etc/whatsupd.toml."""
    lines = ["# whatsupd configuration. Every setting is shown with its default.",
             "# Generated by `python -m whatsup.config`; edit a copy and pass it with --config.",
             "# Any setting can also be given as WHATSUP_SECTION__KEY=value in the environment",
             "# (WHATSUP_SESSION__WINDOW=500) or as --set section.key=value (that wins)."]
    section = None
    for s in SETTINGS:
        sec, key = s.name.split(".", 1)
        if sec != section:
            lines += ["", f"[{sec}]"]
            section = sec
        bound = (f" (minimum {s.minimum})" if s.minimum is not None else
                 f" ({', '.join(s.choices)})" if s.choices else "")
        lines.append(f"# {s.doc}{bound}")
        value = (f'"{s.default}"' if isinstance(s.default, str) else str(s.default).lower()
                 if isinstance(s.default, bool) else repr(s.default))
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_toml())
