"""A read-only mapping for the fields of frozen records: hashable, comparable, and it copies and pickles.

``types.MappingProxyType`` is read-only too, but cannot be deep-copied or pickled, and a shrunk model
carries its plans (and so their budgets) through ``copy.deepcopy`` and ``torch.save``.

>>> import copy, pickle
>>> d = FrozenDict({"layer4.*": 0.0})
>>> d["layer4.*"], d == {"layer4.*": 0.0}, copy.deepcopy(d) == pickle.loads(pickle.dumps(d)) == d
(0.0, True, True)
>>> d["fc"] = 0.5
Traceback (most recent call last):
...
TypeError: 'FrozenDict' object does not support item assignment
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["FrozenDict"]


class FrozenDict(Mapping):
    """A mapping whose items never change after construction."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[Any, Any] | None = None):
        self._data = dict(data or {})

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))
