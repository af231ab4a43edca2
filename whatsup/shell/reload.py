"""Hot code reload: load a module's new code, then swap it into every live process built on it.

Prosody's order, so a bad module never half-replaces a good one:

1. **Compile and import the new code first** — from the source on disk, into a
   *fresh* module object (never on top of the running one, and never through
   a possibly stale .pyc). A SyntaxError or an exception at import raises
   :class:`ReloadError`: ``sys.modules`` is left as it was and every process
   keeps running the old code.
2. **Publish it**: ``sys.modules``, the parent package, and every name other
   whatsup modules imported from it (``from .session import Session``) now
   point at the new objects, and so do the factories that start shard
   workers: new and restarted processes start on the new code.
3. **Swap live processes**: for every process whose behaviour class comes
   from the module, an urgent system message — handled right after the
   message in hand has finished on the old code, before those waiting — sets ``proc.behaviour`` to
   the class of the same qualname in the new module and, when that class
   defines ``code_change(old_state, old_vsn)``, migrates the state. A process
   whose migration raises keeps its old code and state (reported). Processes
   keep their sockets: nothing is reconnected.

The objects the sessions call directly (the router, presence, blocks, the
groups) are the states of service processes (whatsup/runtime/service.py),
whose ``code_change`` gives the live object its module's new class: every
caller runs the new code from its next call. Objects built once at start that
no process owns would keep the class they were built with, so reloading their
module is refused (``FIXED``) instead of accepted for nothing.
Exception classes keep their identity (see :func:`_keep_exceptions`).
"""
import importlib.util
import logging
import sys
import traceback

import gevent

from ..runtime import CallTimeout, ProcessDead

log = logging.getLogger("whatsup.shell.reload")
PACKAGE = "whatsup"
#: swaps in flight at once: the hub polls the sockets between two such chunks, where 5,000
#: swaps started at once kept every session waiting ~260 ms (ops.bench reload)
SWAPS = 64
MACHINERY = ("whatsup.runtime.process", "whatsup.shell")  # live Process objects and consoles run this code
#: Modules whose live objects are built once at start, are no process's state and so keep their
#: class: a reload would change nothing they do. Why, in the words of the refusal.
FIXED = {
    "whatsup.routing.sm": "the session manager (who is where) is one object the node built at start",
    "whatsup.routing.dedup": "the router's dedup window is built at start and keeps its class "
                             "(reload whatsup.routing.router for the routing rules)",
    "whatsup.runtime.timers": "the node's deadline heap is one object built at start",
    "whatsup.c2s.services": "the sessions' Services are built once at start",
    "whatsup.users.lifecycle": "the account lifecycle is one object the node built at start",
    "whatsup.users.registration": "registration is one object the node built at start",
    "whatsup.users.devices": "device linking (link codes, unlink) is one object the node built at start",
}


class ReloadError(Exception):
    """The new code did not load; the old code keeps running everywhere."""


class ReloadReport(dict):
    """What a reload did; prints as a short summary in the shell."""

    def __repr__(self):
        failed = "".join(f"\n  {pid}: {why}" for pid, why in self["failed"].items())
        return (f"reloaded {self['module']}: {self['swapped']} processes on the new code "
                f"({self['migrated']} migrated by code_change), {self['gone']} gone meanwhile, "
                f"{len(self['failed'])} kept the old code{failed}")


def reload(table, name, timeout=10.0, starters=()):
    """Reload module ``name`` (``whatsup.*``) and swap it into ``table``'s processes.

    ``starters`` are the objects that start processes later from a behaviour
    class they hold (``.behaviour``: the factories behind the node's shards);
    they start the new class from now on, so a restart does not bring back the
    old code.
    """
    old = sys.modules.get(name)
    if not name.startswith(PACKAGE + ".") or old is None:
        raise ReloadError(f"{name!r} is not a loaded {PACKAGE} module")
    if any(name == m or name.startswith(m + ".") for m in MACHINERY):
        raise ReloadError(f"{name} is the machinery doing the reload (processes, mailboxes, this shell): "
                          f"restart the node to change it")
    if name in FIXED:
        raise ReloadError(f"{name} cannot be reloaded: {FIXED[name]}; restart the node to change it")
    new = _load(name, old)
    renamed = _publish(name, old, new)
    for starter in starters:
        starter.behaviour = renamed.get(id(starter.behaviour), starter.behaviour)
    procs = [p for p in table.processes() if p.behaviour.__module__ == name]
    report = ReloadReport(module=name, swapped=0, migrated=0, gone=0, failed={})
    for at in range(0, len(procs), SWAPS):
        gevent.joinall([gevent.spawn(_swap, table, proc, new, timeout, report) for proc in procs[at:at + SWAPS]])
    log.warning("hot reload of %s: %r", name, report)
    return report


def _load(name, old):
    spec = importlib.util.spec_from_file_location(name, old.__spec__.origin,
                                                  submodule_search_locations=old.__spec__.submodule_search_locations)
    new = importlib.util.module_from_spec(spec)
    try:
        with open(spec.origin, "rb") as f:
            code = compile(f.read(), spec.origin, "exec", dont_inherit=True)
        sys.modules[name] = new  # the module may look itself up while it runs (dataclasses do)
        exec(code, new.__dict__)
    except BaseException as exc:
        sys.modules[name] = old
        detail = "".join(traceback.format_exception_only(exc)).strip()
        log.error("hot reload of %s aborted, the old code keeps running: %s", name, detail)
        raise ReloadError(f"{name} did not load, the old code keeps running everywhere:\n"
                          f"{_own_frames(exc, spec.origin)}") from None
    _keep_exceptions(name, old, new)
    return new


def _own_frames(exc, origin):
    """The error as the module's author needs it: from the first frame in the module's own file on
    (the loader's frames above it are noise); a SyntaxError, raised before any, is the error alone."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != origin:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def _keep_exceptions(name, old, new):
    """Exception classes keep their identity across a reload.

    Live objects built by the old code (a session's frame decoder, a store)
    still raise the old classes, and code everywhere catches them by name: a
    new class of the same name would let those errors through. So the new
    module's functions see the old exception classes; changing an exception
    class itself takes a restart.
    """
    for attr, value in vars(old).items():
        fresh = vars(new).get(attr)
        if (_is_exception(value) and _is_exception(fresh) and value.__module__ == name
                and fresh.__module__ == name):
            setattr(new, attr, value)


def _is_exception(value):
    return isinstance(value, type) and issubclass(value, BaseException)


def _publish(name, old, new):
    """Point sys.modules, the parent package and every importer's names at the new objects.

    Returns {id(old object): new object} for what the module defined.
    """
    sys.modules[name] = new
    parent, _, leaf = name.rpartition(".")
    setattr(sys.modules[parent], leaf, new)
    renamed = {id(old): new}
    for attr, value in vars(old).items():
        if getattr(value, "__module__", None) == name and hasattr(new, attr):
            renamed[id(value)] = getattr(new, attr)
    for modname, module in list(sys.modules.items()):
        if module is None or module is new or not (modname == PACKAGE or modname.startswith(PACKAGE + ".")):
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in renamed:
                setattr(module, attr, renamed[id(value)])
    return renamed


def _swap(table, proc, new, timeout, report):
    cls = new
    for part in proc.behaviour.__qualname__.split("."):
        cls = getattr(cls, part, None)
    if cls is None:
        report["failed"][proc.pid] = f"{proc.behaviour.__qualname__} is not in the new module"
        return

    def swap(p):
        change = getattr(cls, "code_change", None)
        if change is not None:
            p.state = change(p.state, p.vsn)
        p.behaviour, p.vsn = cls, getattr(cls, "vsn", 1)
        return change is not None
    try:
        migrated = table.sys(proc.pid, swap, timeout, urgent=True)
    except ProcessDead:
        report["gone"] += 1
    except CallTimeout:
        report["failed"][proc.pid] = f"busy for {timeout}s; swaps when it reaches the system message"
    except Exception as exc:
        report["failed"][proc.pid] = f"code_change raised {exc!r}; old code and state kept"
    else:
        report["swapped"] += 1
        report["migrated"] += migrated
