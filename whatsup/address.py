"""``host:port`` addresses as the config and the command lines write them, and the loopback rule.

The operator shell (arbitrary code execution) and the metrics endpoint (users'
activity) are served on loopback only; both check that here, so the two rules
cannot drift apart. Imports nothing heavy: ``whatsup-shell`` and the client use it.
"""
import ipaddress


def split(text, default_host="127.0.0.1"):
    """``"host:port"``, ``"[::1]:port"`` or ``":port"`` -> (host, port); ValueError if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {text!r} must be host:port")
    return host.strip("[]") or default_host, int(port)


def is_loopback(host):
    """True for a loopback IP literal; False for anything else, host names included."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback(text, setting, why):
    """``host:port`` whose host is a loopback IP literal (127.0.0.0/8, ::1) -> (host, port).

    Anything else raises ValueError naming ``setting`` and ``why``. Host names, even
    ``localhost``, are refused: what they resolve to is up to /etc/hosts and DNS.
    """
    try:
        host, port = split(text, default_host="")
    except ValueError:
        raise ValueError(f"{setting} {text!r} must be a loopback host:port") from None
    if not is_loopback(host):
        raise ValueError(f"{setting} {text!r} refused: {why}, so it is served on loopback only "
                         f"(127.0.0.0/8 or ::1)")
    return host, port
