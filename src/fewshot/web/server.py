"""Running the explorers' app in a background thread (tests, notebooks): ``with running(app) as url: ...``;
and :func:`check_host`, which refuses a host that cannot be listened on before a port is blamed for it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def check_host(host: str) -> None:
    """Refuses a host to listen on that is not an IP address or name of this machine, saying what to give.

    Uses the address family ``fewshot serve`` binds with: IPv6 if ``host`` contains ``:``, else IPv4. A host
    that looks numeric (digits and dots) is never looked up in DNS, so ``256.1.1.1`` is refused at once.

    Raises:
        ValueError: one line naming ``host`` and what to give instead.

    Example:
        >>> check_host("127.0.0.1")  # this machine only; "0.0.0.0" listens on every interface
    """
    give = (
        "give an IP address of this machine or a name that resolves to one, e.g. 127.0.0.1 (this machine only) "
        "or 0.0.0.0 (every interface)"
    )
    if not host.strip():
        raise ValueError(f"the host is empty; {give}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if family == socket.AF_INET and all(c.isdigit() or c == "." for c in host):
        try:
            socket.inet_aton(host)
        except OSError:
            raise ValueError(
                f"host {host} is not a valid IPv4 address (four numbers from 0 to 255 joined by dots); {give}"
            ) from None
    try:
        # a host with ':' is an IPv6 address, never a name: parsed without asking DNS
        flags = socket.AI_NUMERICHOST if family == socket.AF_INET6 else 0
        address = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM, 0, flags)[0][4][0]
    except (socket.gaierror, UnicodeError) as e:  # UnicodeError: a name with an empty or too long label
        kind = "IPv6 address" if family == socket.AF_INET6 else "IPv4 address or a name that resolves to one"
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise ValueError(f"host {host} is not an {kind} ({reason}); {give}") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))  # port 0: any free port, only the address is being checked
        except OSError as e:
            shown = host if address == host else f"{host} ({address})"
            raise ValueError(
                f"host {shown} is not an address of this machine ({e.strerror}); {give}"
            ) from None


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serves ``app`` with uvicorn in a daemon thread; yields its base URL, stops it on exit.

    Args:
        app: an ASGI application (:func:`fewshot.web.app.create_app`).
        host: address to listen on (this machine only by default).
        port: TCP port; 0 takes a free one.
        timeout: seconds to wait for the server to start (and, on exit, to stop).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fewshot-web")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the web server did not start within {timeout:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
