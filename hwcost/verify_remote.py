"""Hardware in the loop on a remote device: the verify loop measuring through a bundle and its runner.

A table imported from a Raspberry Pi or a phone (``hwcost table import``) was measured where this
machine cannot run anything. ``hwcost verify RUN`` closes the loop there the same way ``search
--verify`` does locally (``hwcost.verify.verify_search``), with the measurement sent out:

    round r: the derived network + CANDLES of the table's calibration networks
             --> a bundle of whole networks (verify_round<r>.zip in RUN)
             --> the device's runner (by hand, or over ssh with --ssh)
             --> results.json --> measured ms, brought back to the calibration's phase by the
                 calibration networks beside it --> in [floor B, B]? done : refit, re-derive, round r+1

Between rounds the loop waits in ``result.json`` (``verify.pending``: the round, its network, the
bundle and the bundle's id, which the results must carry), so a device that is reached by hand
costs one command per round: ``hwcost verify RUN --results results.json``.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from spaces.errors import HwcostError

from .calibrate import is_remote_table
from .verify import CANDLES, VerifyPending, candle_samples

NETWORK_NAME = "verify round {r}"
CANDLE_NAME = "calibration network {i}"


def _spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def bundle_id(path: str | Path) -> str:
    """The id a runner writes into its results (``bundle.id``): the SHA-256 of the manifest."""
    with zipfile.ZipFile(path) as zf:
        return hashlib.sha256(zf.read("manifest.json")).hexdigest()


def runner_settings(table) -> dict:
    """The runner settings that measure a whole network as the table's calibration networks were:
    the table's provider and threads, 10 interleaved windows (as ``hwcost calibrate`` locally)."""
    from .calibrate import network_settings
    s = network_settings()
    out = {"threads": int(table.runtime.get("threads") or 1), "max_time_s": s.max_time_s, "passes": s.passes}
    if table.runtime.get("execution_provider"):
        out["provider"] = table.runtime["execution_provider"]
    return out


class RemoteMeasure:
    """The ``measure`` of :func:`hwcost.verify.verify_search` for a remote device's table.

    ``results``: the runner's results of the round that waits (``pending``, from ``result.json``).
    ``run_bundle``: ``(bundle, results_path) -> None`` runs a bundle on the device and fetches its
    results (``profilers.bundle.run_over_ssh`` for ``--ssh``); without it a round that has no results
    writes its bundle and raises :class:`VerifyPending`."""

    def __init__(self, out: str | Path, results: str | Path | None = None, pending: dict | None = None,
                 run_bundle: Callable[[Path, Path], None] | None = None, log: Callable[[str], None] = print):
        self.out = Path(out)
        self.results = Path(results) if results is not None else None
        self.pending = pending or {}
        self.run_bundle = run_bundle
        self.log = log
        if self.results is not None and not self.pending:
            raise HwcostError(f"no network of {self.out} waits for a device's results (nothing pending)")

    def __call__(self, r, spec, model, shape, table, prediction, budget, floor):
        if self.results is not None:                      # the results of the round that waited
            results, self.results = self.results, None
            if self.pending.get("round") != r:
                raise HwcostError(f"{self.out}: round {r} is next, but the results given are for round "
                                  f"{self.pending.get('round')}")
            return self._record(results, self.pending, r, table, prediction, budget, floor)
        bundle = self.out / f"verify_round{r}.zip"
        pending = self._write_bundle(bundle, r, spec, model, shape, table)
        if self.run_bundle is None:
            raise VerifyPending(pending)
        results = self.out / f"verify_round{r}_results.json"
        self.log(f"   running {bundle.name} on the device")
        self.run_bundle(bundle, results)
        return self._record(results, pending, r, table, prediction, budget, floor)

    def _write_bundle(self, path: Path, r: int, spec, model, shape, table) -> dict:
        from profilers.bundle import write_bundle

        from .calibrate import build_spec
        nets = [(NETWORK_NAME.format(r=r), spec, model, shape)]
        for i, s in enumerate(candle_samples(table, CANDLES)):
            net, sh = build_spec(s.spec)
            nets.append((CANDLE_NAME.format(i=i), s.spec, net, sh))
        write_bundle([], path, settings=runner_settings(table), calibration=nets,
                     back_on_host=f"hwcost verify {self.out} --results results.json")
        self.log(f"   wrote {path} (the derived network and {len(nets) - 1} calibration networks of the table, "
                 f"as ONNX, with the runner)")
        return {"round": r, "bundle": str(path), "bundle_id": bundle_id(path), "device": table.device.get("name")}

    def _record(self, results: Path, pending: dict, r: int, table, prediction, budget, floor):
        """(record, measurement, reference) of the round from the runner's results."""
        from device_tables.errors import TableError
        from device_tables._io import read_json
        from profilers.bundle import calibration_rows
        try:
            doc = read_json(results)
            rows = calibration_rows(doc)
        except (TableError, OSError) as e:
            raise HwcostError(f"results {results}: {e}") from None
        got = (doc.get("bundle") or {}).get("id") if isinstance(doc, dict) else None
        if got != pending.get("bundle_id"):
            raise HwcostError(f"results {results} are of another bundle (id {str(got)[:12]}...), not of "
                              f"{pending.get('bundle')} (id {str(pending.get('bundle_id'))[:12]}...): run that "
                              f"bundle on the device and give its results")
        self._check_device(doc, table, results)
        mine = [x for x in rows if x["name"].endswith(NETWORK_NAME.format(r=r))]
        if not mine:
            failed = [x for x in doc.get("calibration") or [] if isinstance(x, dict) and "error" in x]
            why = f": {failed[0]['error']}" if failed else ""
            raise HwcostError(f"results {results}: the device did not measure the derived network{why}")
        row = mine[0]
        then = {_spec_key(s.spec): s.measured_ms for s in candle_samples(table, CANDLES)}
        ratios = [x["median_ms"] / then[k] for x in rows if x is not row and (k := _spec_key(x["spec"])) in then]
        phase = statistics.median(ratios) if ratios else None
        scale = phase if phase is not None and phase > 1.0 else 1.0   # a slower phase taken out, as locally
        ms = row["median_ms"] / scale
        rec = {"table_predicted_ms": prediction.latency_ms, "low_ms": prediction.low_ms,
               "high_ms": prediction.high_ms, "confidence": prediction.confidence,
               "measured_ms": ms, "measured_p10_ms": row["p10_ms"] / scale, "measured_p90_ms": row["p90_ms"] / scale,
               "measured_raw_ms": row["median_ms"], "phase": phase, "session_medians_ms": [ms],
               "budget_ms": budget, "floor_ms": floor, "in_band": None if budget is None else floor <= ms <= budget,
               "reference_ms": None, "device": (doc.get("environment") or {}).get("device_name"),
               "results": str(results), "bundle": pending.get("bundle")}
        meas = SimpleNamespace(median=ms / 1e3, p10=row["p10_ms"] / scale / 1e3, p90=row["p90_ms"] / scale / 1e3)
        return rec, meas, None

    @staticmethod
    def _check_device(doc: dict, table, results: Path) -> None:
        """The results must come from the table's device, runtime and threads."""
        env = doc.get("environment") if isinstance(doc.get("environment"), dict) else {}
        want = {"cpu_model": table.device.get("cpu_model"), "provider": table.runtime.get("execution_provider"),
                "threads": table.runtime.get("threads")}
        differ = [f"{k} {env.get(k)!r} (the table: {v!r})" for k, v in want.items()
                  if v is not None and env.get(k) != v]
        if differ:
            raise HwcostError(f"results {results} were measured with another device or settings than the table "
                              f"{table.source}: {'; '.join(differ)}")


__all__ = ["RemoteMeasure", "is_remote_table", "runner_settings"]
