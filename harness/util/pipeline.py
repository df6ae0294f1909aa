"""Ordered work a few items ahead on worker threads: the overlap both extraction and decoder training need.

Extraction keeps requests in flight to a model server while the harness writes the last
batch to the cache; the frozen decoder reads and pins the next batch of the cache while
the device runs this one. Both are :func:`ahead`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
Item = TypeVar("Item")


def ahead(fn: Callable[[Item], T], items: Iterable[Item], depth: int, name: str = "ahead") -> Iterator[T]:
    """``fn(item)`` for each item, in order, up to ``depth`` calls submitted at once on ``depth`` threads.

    While the caller uses one result, ``depth - 1`` later calls run; ``depth=1`` is a plain
    loop on one worker thread. At most ``depth`` results are held. A caller that stops
    early (an error, a closed generator) cancels what has not started.
    """
    depth = max(1, depth)
    with ThreadPoolExecutor(depth, thread_name_prefix=name) as pool:
        pending: collections.deque[Future[T]] = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
