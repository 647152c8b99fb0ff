"""Reading ahead: a background thread loads the next items of a sequence while the caller works
on the current one, so that a streamed pass costs max(read, compute) per item instead of their sum.

Why a thread is enough: the reads are positioned `readinto` calls on unbuffered files
(`fgsn.models.safetensors_io.read_tensor`), which release the GIL for the system call, and torch
releases it inside its kernels, so reading and arithmetic run at the same time.

Memory is bounded by `depth`: the thread takes a slot before it loads an item and the caller gives
the slot back when it takes the item, so at most `depth` loaded items wait beside the one the
caller works on. An error in the thread (a failed or truncated read) is raised in the caller at the
item where it happened; an error or early exit in the caller stops the thread. Neither side waits
forever on the other.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")

_END = object()
POLL_S = 0.2       # how often a waiting side checks that the other is still there
JOIN_S = 30.0      # how long a closing caller lets an in-flight read finish


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(keys: Iterable[K], load: Callable[[K], T], depth: int = 1,
               name: str = "fgsn-prefetch") -> Iterator[tuple[K, T]]:
    """Yield `(key, load(key))` for every key, in order, with up to `depth` items loaded ahead in a
    background thread. `depth=0` loads in the caller's thread (no thread, the same results)."""
    if depth <= 0:
        for k in keys:
            yield k, load(k)
        return
    results: queue.Queue = queue.Queue()
    slots = threading.Semaphore(depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for k in keys:
                while not slots.acquire(timeout=POLL_S):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                results.put((k, load(k)))
            results.put(_END)
        except BaseException as e:  # noqa: BLE001 (handed to the caller, raised there)
            results.put(_Failure(e))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = results.get(timeout=POLL_S)
            except queue.Empty:
                if not thread.is_alive() and results.empty():
                    raise RuntimeError(f"{name}: the reading thread ended without a result or an error") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            slots.release()
            yield item
            del item  # the caller holds the current item; do not keep the previous one alive
    finally:
        stop.set()
        slots.release()  # wake a thread waiting for a slot
        thread.join(JOIN_S)
