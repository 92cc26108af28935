"""A plugin's events: listeners registered by name, called in registration order.

A listener that raises is logged and skipped: an event must never break the write or the commit
that sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, get_args

from ecanalytics.errors import ConfigurationError

log = logging.getLogger(__name__)
Callback = Callable[[dict[str, Any]], None]
Event = Literal["eventual-consistency.consolidated", "eventual-consistency.transaction-error"]
EVENTS: tuple[str, ...] = get_args(Event)


class Events:
    """The listeners of one plugin, by event."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callback]] = {}

    def on(self, event: str, callback: Callback) -> Callback:
        """Call ``callback(payload)`` on ``event`` (one of :data:`EVENTS`); returns the callback."""
        if event not in EVENTS:
            raise ConfigurationError(f"Unknown event {event!r}; use one of {list(EVENTS)}.")
        self._listeners.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling ``callback`` on ``event``."""
        self._listeners.get(event, []).remove(callback)

    def emit(self, event: Event, payload: dict[str, Any]) -> None:
        """Call every listener of ``event`` with ``payload``."""
        for callback in list(self._listeners.get(event, [])):
            try:
                callback(payload)
            except Exception:  # a listener must never break a write or a commit
                log.exception("Listener for %s failed", event)
