"""The cost model: a key's latency from the device table, else a surrogate, else an error.

It never skips a key (nn-Meter's under-counting bug): a key neither source
can answer raises :class:`MissingKeyError` naming the key and what to do.
Every answer is counted by source, so predictions can say how much of a
figure was measured and how much was modelled.
"""
from __future__ import annotations

from collections import Counter
from typing import Protocol

from device_tables import DeviceTable, OpKey
from device_tables.errors import MissingKeyError


class OpSurrogate(Protocol):
    def predict_key(self, key: OpKey) -> float:
        """Latency in ms; raise MissingKeyError/KeyError for an op type it was not fitted on."""


class CostModel:
    def __init__(self, table: DeviceTable | None = None, surrogate: OpSurrogate | None = None):
        if table is None and surrogate is None:
            raise ValueError("a cost model needs a device table, a surrogate, or both")
        self.table, self.surrogate = table, surrogate
        self.sources: Counter = Counter()

    def latency_ms(self, key: OpKey) -> float:
        value, _ = self.answer(key)
        return value

    __call__ = latency_ms

    def answer(self, key: OpKey) -> tuple[float, str]:
        """(latency in ms, "table" | "surrogate")."""
        if self.table is not None:
            entry = self.table.get(key)
            if entry is not None:
                self.sources["table"] += 1
                return float(entry.median_ms), "table"
        if self.surrogate is not None:
            try:
                value = float(self.surrogate.predict_key(key))
            except KeyError:
                pass
            else:
                self.sources["surrogate"] += 1
                return value, "surrogate"
        where = "the table" + (" or the surrogate" if self.surrogate is not None else " (and no surrogate was given)")
        raise MissingKeyError(f"no latency for {key.to_str()} in {where}; profile it "
                              f"(hwcost profile ...) or fit a surrogate (hwcost fit ...)")

    def reset_counts(self) -> None:
        self.sources.clear()
