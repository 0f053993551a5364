"""Delivery after a gap in the Socket.IO queue listener (placeholder)."""
from __future__ import annotations


def install(socketio, store, conns, settings) -> None:
    """Make every local client whole after the listener may have missed something."""
