"""Background threads with bounded queues: reading ahead of the computation (`prefetch`, a background producer)
and writing behind it (`BackgroundWriter`, a background consumer). Both rest on one `BoundedHandoff`: a bounded
queue whose blocking put gives up once the other side has gone, and the first error of the background side,
re-raised on the caller's thread. Bounded, so memory stays flat whichever side is slower."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


class BoundedHandoff:
    """A bounded queue between the caller's thread and one background thread, and that thread's first error."""

    def __init__(self, depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self.error: BaseException | None = None

    def put(self, item: object) -> bool:
        """Block until there is room; False (item dropped) once `stop` was called."""
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> object:
        return self._queue.get()

    def drain(self) -> None:
        """Drop whatever is queued."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def stop(self) -> None:
        self._stopped.set()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield `items`, produced up to `depth` ahead in a background thread; producer errors surface here."""
    handoff = BoundedHandoff(depth)

    def produce() -> None:
        try:
            for item in items:
                if not handoff.put(item):
                    return
        except BaseException as exc:
            handoff.error = exc
        finally:
            handoff.put(_DONE)

    thread = threading.Thread(target=produce, name="graft-reader", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not _DONE:
            yield item  # type: ignore[misc]
        handoff.raise_error()
    finally:
        handoff.stop()
        thread.join()


class BackgroundWriter:
    """A single thread that performs writes queued by the main thread, in order.

    The queue is bounded so a slow disk throttles the producer instead of letting buffers pile up in memory.
    The first error is re-raised in the main thread at the next `submit` or at `close`.
    """

    def __init__(self, depth: int = 4) -> None:
        self._handoff = BoundedHandoff(depth)
        self._thread = threading.Thread(target=self._run, name="graft-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._handoff.raise_error()
        self._handoff.put((fn, args))

    def close(self) -> None:
        self._handoff.put(_DONE)
        self._thread.join()
        self._handoff.raise_error()

    def abort(self) -> None:
        """Stop after the current job, dropping the rest (used when the main thread fails)."""
        self._handoff.drain()
        self._handoff.put(_DONE)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._handoff.get()) is not _DONE:
            if self._handoff.error is not None:
                continue
            fn, args = job  # type: ignore[misc]
            try:
                fn(*args)
            except BaseException as exc:  # re-raised in the main thread
                self._handoff.error = exc


__all__ = ["BackgroundWriter", "BoundedHandoff", "prefetch"]
