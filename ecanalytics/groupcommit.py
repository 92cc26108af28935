"""Group commit of sync writes: writers that arrive while a commit runs share the next one.

The first writer of a batch to get the turn runs it (``run(batch)``: write the batch's rows, commit
them with the objects its writers already wrote); the others wait for that batch. A batch that
fails fails for every writer in it, with the same error: nobody is told a write committed when it
did not. Nothing here knows storage: the plugin supplies ``run``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Batch:
    """Sync writes committed together."""

    seen: int  # the oldest version a writer of the batch had seen before writing
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # single writes, not yet written
    objects: list[tuple[Any, int]] = dataclasses.field(default_factory=list)  # (written object, version seen)
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """One field's group commit (see the module docstring)."""

    def __init__(self, run: Callable[[Batch], None]) -> None:
        self._run = run
        self._cond = threading.Condition()
        self._open: Batch | None = None  # the batch that writers arriving now join
        self._running = False

    def join(self, *, seen: int, objects: list[tuple[Any, int]] | None = None,
             row: dict[str, Any] | None = None) -> None:
        """Add a writer's ``row`` (or already written ``objects``) to the open batch and return
        once that batch committed; raise its error if it failed."""
        with self._cond:
            batch = self._open
            if batch is None:
                batch = self._open = Batch(seen=seen)
            batch.objects.extend(objects or [])
            if row is not None:
                batch.rows.append(row)
            batch.seen = min(batch.seen, seen)
            while not batch.done:
                if self._running:
                    self._cond.wait()
                    continue
                self._running, self._open = True, None
                self._cond.release()
                try:
                    self._run(batch)
                except BaseException as exc:  # every writer of the batch gets it
                    batch.error = exc
                finally:
                    self._cond.acquire()
                    self._running, batch.done = False, True
                    self._cond.notify_all()
        if batch.error is not None:
            raise batch.error
