"""The Socket.IO packet gate: every packet a client sends passes here before python-socketio.

(Placeholder; filled in by the packet-gate work.)
"""
from __future__ import annotations


def guard(server, settings, conns) -> None:
    """Wrap `server` so that hostile packets cost their sender and never reach a handler."""
