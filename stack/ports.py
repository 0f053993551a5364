"""Free loopback ports for the local stacks, the tests and the load tests: one way to pick them.

A port is picked now and bound later by another process (a web worker, nginx, Redis), so two
things can take it in between. Ports the kernel hands out (`bind` to port 0, and the local port
of every outgoing connection: a worker's connections to Redis) come from its ephemeral range,
and in CI two tests' web workers were once given the same port that way (gunicorn: "Address
already in use", and one test's clients reached the other test's worker). So ports are picked below that range, where the kernel never hands any out,
by a cursor that walks it from a random start; and each pytest-xdist process walks a slice of
its own (PYTEST_XDIST_WORKER, inherited by the stacks a test starts), so two test processes
never pick the same port. Each pick is checked by binding it.
"""
from __future__ import annotations

import os
import random
import socket

LOWEST = 10000  # below: the well-known and registered services of a developer's machine
_cursor: int | None = None


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _slice() -> tuple[int, int]:
    """This process's range of ports: [low, high)."""
    low, high = LOWEST, _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        size = (high - low) // count
        low += int(worker[2:]) % count * size
        high = low + size
    return low, high


def _bound(host: str, port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        return None
    return s


def _take(host: str) -> socket.socket:
    """A socket bound to the next free port of this process's slice (the kernel's pick where
    the slice is too small: a machine whose ephemeral range starts low)."""
    global _cursor
    low, high = _slice()
    if high - low >= 100:
        if _cursor is None or not low <= _cursor < high:
            _cursor = random.randrange(low, high)
        for _ in range(high - low):
            port, _cursor = _cursor, _cursor + 1 if _cursor + 1 < high else low
            s = _bound(host, port)
            if s is not None:
                return s
    s = _bound(host, 0)
    if s is None:
        raise RuntimeError("no free port")
    return s


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """`preferred` if it is free, else the next free one of this process's slice."""
    s = _bound(host, preferred) if preferred else None
    if s is None:
        s = _take(host)
    with s:
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports, all held open while they are chosen."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(_take(host))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
