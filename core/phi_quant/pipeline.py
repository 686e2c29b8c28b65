"""Run a conversion's producing side (read + quantize) one step ahead of its writing side.

A backend's export loop reads a block of rows, packs it and writes the bytes, one block after
the other: while it writes, the cores that quantize sit idle, and while it quantizes, nothing is
written. :func:`ahead` moves the producing generator into a worker thread that stays at most
``depth`` items ahead of the caller, so packing block i+1 overlaps writing block i. The C kernel,
numpy and file writes release the GIL, so the two sides really run at once. Items come out in
the order they were produced (the output bytes do not change), memory grows by at most ``depth``
items, and an exception on either side stops both.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

__all__ = ["ahead"]

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` as produced by a worker thread running at most ``depth`` items ahead.

    Closing the returned generator early (a ``break``, an exception in the caller) stops the
    worker before it takes another item; an exception raised while producing is re-raised here.
    """
    if depth < 1:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failure(exc))
            return
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's cleanup (open files, mappings) runs now, in this thread
        put(_DONE)

    worker = threading.Thread(target=produce, name="phi-quant-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()
