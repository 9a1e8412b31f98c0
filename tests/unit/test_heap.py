"""Freezing a started process's heap out of the garbage collector's full collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from coscale.runtime.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # give the test process its collections back


def test_live_objects_are_frozen_and_garbage_cycles_collected_first(unfrozen: None) -> None:
    kept = [Node() for _ in range(1000)]
    a, b = Node(), Node()
    a.other, b.other = b, a  # a garbage cycle once dropped: only a collection frees it
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None
    frozen = freeze_startup_heap()
    assert gone() is None  # collected before the freeze, not frozen with the rest
    assert frozen == gc.get_freeze_count() >= len(kept)
    # a full collection no longer visits what was frozen
    assert not any(o is kept[0] for o in gc.get_objects())


def test_objects_created_after_the_freeze_are_still_collected(unfrozen: None) -> None:
    freeze_startup_heap()
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
