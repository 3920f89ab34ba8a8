"""A small least-recently-used cache for what the runtime keeps per shape (output buffers, CUDA graphs).

A long-lived pipeline (a server, a batch job) sees many shapes over its life: every batch size a
request brings, every sampler setting. Kept forever, their buffers and graphs grow without bound
(GPU memory above all); a few entries cover the shapes a workload repeats, and an evicted one is
made again on its next use (a new allocation, a new capture), never wrong. Results a caller still
holds stay valid after eviction: the cache drops its reference, not the tensor.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """At most `size` entries; using one (`get`, `get_or_make`) makes it the most recent, and a new
    entry beyond `size` evicts the least recent."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"an LRU cache holds at least one entry, not {size}")
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:  # no recency change: a look, not a use
        return key in self._items

    def __iter__(self) -> Iterator[Hashable]:  # keys, least recent first
        return iter(list(self._items))
