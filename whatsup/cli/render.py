"""Frames as one line of text for people: ``whatsup inbox``, ``presence`` and ``chat`` share it."""
import datetime

TICKS = {"sent": "✓", "delivered": "✓✓", "read": "✓✓ read"}


def stamp(ms):
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def describe(frame, me=None):
    """One line for a frame the server pushed (``me``: the user reading it, said as "you")."""
    kind = frame.get("type")
    where = f" in {frame['group']}" if "group" in frame else ""
    when = f"[{stamp(frame['ts'])}] " if "ts" in frame else ""
    mine = me is not None and frame.get("from") == me  # another device of yours: what you sent or read
    on = f" on device {frame['device']}" if mine and "device" in frame else ""
    if kind == "msg":
        if mine:
            to = f" to {frame['to']}" if "to" in frame else ""
            return f"{when}you{to}{where}{on}: {frame['body']}"
        return f"{when}{frame['from']}{where}: {frame['body']}"
    if kind == "receipt":
        if mine and "to" in frame:
            return f"{when}you read {frame['to']}'s{where}{on}: {', '.join(frame['ids'])}"
        what = f"delivered to {frame['from']}" if frame["status"] == "delivered" else f"read by {frame['from']}"
        return f"{when}{TICKS[frame['status']].split()[0]} {what}{where}: {', '.join(frame['ids'])}"
    if kind == "group_event":
        return f"{when}group {frame['group']}: {group_event(frame, me)}"
    if kind == "presence":
        if frame["online"]:
            return f"{frame['user']} is online"
        if "last_seen" in frame:
            return f"{frame['user']} was last seen at {stamp(frame['last_seen'])}"
        return f"{frame['user']} is offline"
    if kind == "typing":
        return f"{frame['from']}{where} is {frame['state']}" + ("…" if frame["state"] != "paused" else "")
    if kind == "error":
        return f"! {frame.get('code')}: {frame.get('message')}"
    return " ".join(f"{k}={v}" for k, v in frame.items())


def group_event(frame, me=None):
    """What happened to a group, in words ("alice added bob, carol")."""
    def name(user):
        return "you" if user == me else user
    by, event = name(frame["by"]), frame["event"]
    members = ", ".join(map(name, frame.get("members", ()))) or "nobody"
    if event == "created":
        return f"{by} created \"{frame['name']}\" with {members}"
    if event == "added":
        return f"{by} added {members}"
    if event == "removed":
        return f"{by} removed {members}"
    if event == "left":
        heir = f"; {name(frame['heir'])} is now an admin" if "heir" in frame else ""
        return f"{members} left{heir}"
    if event == "admin":
        return f"{by} made {name(frame['user'])} {'an admin' if frame['admin'] else 'no longer an admin'}"
    if event == "renamed":
        return f"{by} renamed it \"{frame['name']}\""
    return f"{event} by {by}"
