"""A told drain: a stopping worker sends its clients elsewhere at once (placeholder)."""
from __future__ import annotations


def drain(socketio, conns, settings) -> None:
    """Tell every local client to reconnect elsewhere, wait for them, close the rest."""
