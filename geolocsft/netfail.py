"""One clear line for a failed download, whatever library raised it. Users of this tool are
often offline: "no network" is a normal answer, and the line says what to do instead.

`describe(exc)` walks the exception and its causes (huggingface_hub, requests, urllib3, httpx
and the standard library wrap each other) and names the first thing it recognises.
"""

from __future__ import annotations

import socket

_DNS_WORDS = ("name or service not known", "temporary failure in name resolution",
              "nodename nor servname", "getaddrinfo failed", "no address associated",
              "name resolution", "failed to resolve")
_DROP_WORDS = ("incompleteread", "connection broken", "remotedisconnected",
               "remoteprotocolerror", "connection reset", "chunkedencodingerror",
               "peer closed connection", "protocolerror", "server disconnected")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
        for attr in ("reason", "original_error"):  # urllib's URLError, some wrappers
            inner = getattr(exc, attr, None) if exc is not None else None
            if isinstance(inner, BaseException):
                yield inner


def http_status(exc: BaseException) -> int | None:
    for item in _chain(exc):
        response = getattr(item, "response", None)
        status = getattr(response, "status_code", None) or getattr(item, "code", None) \
            or getattr(item, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


def kind(exc: BaseException) -> str:
    """"offline", "dns", "refused", "timeout", "dropped", "auth", "not found", "server", or "" (not a
    network failure this module knows)."""
    if any(type(item).__name__ == "OfflineModeIsEnabled" for item in _chain(exc)):
        return "offline"
    status = http_status(exc)
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not found"
    if status is not None and status >= 500:
        return "server"
    for item in _chain(exc):
        text = f"{type(item).__name__}: {item}".lower()
        if isinstance(item, socket.gaierror) or any(w in text for w in _DNS_WORDS):
            return "dns"
    for item in _chain(exc):
        text = f"{type(item).__name__}: {item}".lower()
        if isinstance(item, (TimeoutError, socket.timeout)) or "timeout" in text or "timed out" in text:
            return "timeout"
        if any(w in text for w in _DROP_WORDS):
            return "dropped"
        if isinstance(item, (ConnectionRefusedError,)) or "connection refused" in text \
                or "network is unreachable" in text or "no route to host" in text \
                or "max retries exceeded" in text or "connecterror" in text \
                or "newconnectionerror" in text:
            return "refused"
    return ""


_WHAT = {
    "offline": "offline mode is on (HF_HUB_OFFLINE is set)",
    "dns": "no network (the host name cannot be resolved)",
    "refused": "cannot connect (no network, or the server is down)",
    "timeout": "the connection timed out",
    "dropped": "the connection dropped during the download",
    "auth": "access denied (401/403: a gated or private repository)",
    "not found": "not found (404: the file or repository was renamed or removed)",
    "server": "the server failed",
}


def describe(exc: BaseException, *, host: str = "") -> str:
    """What went wrong, in a few words; "" when `exc` is not a recognised network failure."""
    found = kind(exc)
    if not found:
        return ""
    text = _WHAT[found]
    if found == "server":
        text += f" (HTTP {http_status(exc)})"
    return f"{text}{f' [{host}]' if host and found in ('dns', 'refused', 'timeout') else ''}"
