"""Hardware in the loop: measure the network a search derived, and derive again until it fits.

    search --> derived network --> export + measure on the table's backend (this machine)
       ^                                  |
       |   outside [floor * B, B]:        v
       +--- re-derive <-- refit the table's in-context model with this network added

A pipeline that crosses layers (search, profilers, costmodels), so it lives in
``hwcost/``.  Each round records the budget, the prediction with its interval
and the measurement in ``result.json`` (``verify.rounds``).  The table's
calibration grows by the measured networks (role ``verify``) and is written
back to the table file, so a later search on it starts from what was learnt.
A table without a calibration is calibrated first (a few random networks of its
space), since one measured network cannot separate an op mix from noise.
Re-deriving reuses the search's architecture weights (its last checkpoint):
the constrained derivation picks the most probable network inside the band
under the corrected costs.  Only when that leads back to a network measured
already do the weights train a few steps more under the corrected costs
(``finetune``, from the checkpoint, which stays the search's own).  The correction is local:
the refitted model is scaled by measured / predicted of the network measured
last (its neighbours share most of its error), measured networks are priced
by their measurement, and the derivation aims inside [floor B, B] by the
measurement's spread (``search.costs.local_correction``).  Params / MACs
budgets need no loop: they are exact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from spaces.errors import HwcostError

from .calibrate import HOST_SLOW

DEFAULT_ROUNDS = 3
# Search steps that fine-tune the architecture weights under the corrected costs when a re-derivation
# leads back to a network measured already (the "a few alpha fine-tuning steps if needed").
DEFAULT_FINETUNE = 10
FIRST_CALIBRATION = 5   # networks measured to calibrate a table that has no calibration yet
# The derived network is measured in this many sessions (new memory placement each; the median kept): one
# session of a DARTS network on ORT differed from another by up to 10% on a 2-vCPU VM.
SESSIONS = 3


def verify_default(table_path: str | None) -> tuple[bool, str]:
    """Whether ``--verify`` is on by default for this table: it was profiled here (same CPU model and
    identity), on a backend this machine runs, and it is an op-level table in a file (the loop writes
    its calibration back)."""
    from device_tables import bundled_table_path, load_table
    from profilers.environment import same_host
    if table_path is None:
        return False, "no --table"
    path = bundled_table_path(table_path)
    if not Path(table_path).exists():
        return False, f"{table_path} is a bundled table (measured elsewhere)"
    table = load_table(path)
    if table.kind != "op":
        return False, "an architecture-level table (its latencies are already measured networks)"
    from .calibrate import is_remote_table
    if is_remote_table(table):
        return False, (f"{table_path} was measured on a remote device ({table.device.get('name')}): "
                       f"`hwcost verify RUN` measures the derived network there, through a bundle")
    from .calibrate import table_backend
    try:
        table_backend(table)
    except HwcostError as e:
        return False, str(e)
    same, why = same_host(table.device)
    if not same or not table.device.get("cpu_id"):
        return False, why
    return True, why


def check_verifiable(table_path: str | None) -> None:
    """``--verify`` asked for explicitly: one clear error when this machine cannot verify."""
    from device_tables import load_table
    from .calibrate import table_backend
    if table_path is None:
        raise HwcostError("--verify measures the derived network's latency: give --table (a table profiled here)")
    if not Path(table_path).is_file():
        raise HwcostError(f"--verify writes what it measures into the table's calibration: {table_path} is a "
                          f"bundled table; copy it to a file (and profile this machine) first")
    table = load_table(table_path)
    if table.kind != "op":
        raise HwcostError(f"--verify needs an op-level table; {table_path} is architecture-level (its latencies "
                          f"are measurements of the networks already)")
    table_backend(table)   # another CPU, a remote device, another backend: one error


MARGIN_MIN, MARGIN_MAX = 0.02, 0.06


def local_margin(session_ms: list[float]) -> float:
    """How far inside [floor B, B] a re-derivation aims: the spread of the measurement's sessions
    (relative to their median), at least 2% (what a re-measurement of the same network moved between
    runs here) and at most 6% (the band is 15% wide)."""
    import statistics
    med = statistics.median(session_ms)
    spread = (max(session_ms) - min(session_ms)) / med if med > 0 else 0.0
    return min(max(spread, MARGIN_MIN), MARGIN_MAX)


def predicted_text(rec: dict, digits: int = 3) -> str:
    """A verify round's prediction as printed: ``P ms [low, high]``; after a re-derivation the search's
    locally scaled figure ``P`` and the refitted table's ``T`` can differ, and the interval belongs to
    ``T``: ``P ms (the table: T ms [low, high])``. Without a calibration: ``P ms (uncalibrated)``."""
    p = rec["predicted_ms"]
    t = rec.get("table_predicted_ms") or p
    interval = (f" [{rec['low_ms']:.{digits}f}, {rec['high_ms']:.{digits}f}]"
                if rec.get("calibrated", True) and rec.get("low_ms") is not None else " (uncalibrated)")
    if abs(t / p - 1) > 0.005:
        return f"{p:.{digits}f} ms (the table: {t:.{digits}f} ms{interval})"
    return f"{p:.{digits}f} ms{interval}"


def _build(space: str, network: str, arch, table=None):
    """(spec, network, input shape) of a derived architecture; for a space node table the network is
    the ONNX graph ORT runs (its nodes are the table's keys)."""
    from costmodels.node_tensor import is_space_node_table

    from .calibrate import arch_spec, build_spec
    spec = arch_spec(space, network, arch)
    if table is not None and is_space_node_table(table):
        spec["graph"] = "onnx"
    model, shape = build_spec(spec)
    return spec, model, shape


def _arch_text(arch) -> str:
    """One spelling of a derived architecture in records and ``seen`` sets: a genotype dict as sorted
    JSON, anything else as its string."""
    return json.dumps(arch, sort_keys=True) if isinstance(arch, dict) else str(arch)


def _priced(table, table_path, model, shape, confidence, log, profile_missing: bool = True):
    """``(table, prediction)`` of a derived network. A node table that lacks some nodes of ``model``
    (an ONNX graph) gains them first -- profiled now on the table's backend when it was profiled on
    this machine, and saved -- and prices it then; what cannot be priced raises as ``predict_network``
    (so does a missing node when ``profile_missing`` is false: searches of a sweep run side by side and
    share the table, neither a quiet host nor one writer)."""
    from costmodels.predict import predict_network
    from device_tables import MissingKeyError, save_table
    from spaces.onnx_graph import OnnxGraph

    from .calibrate import _profile_missing_layers, table_backend
    try:
        return table, predict_network(model, shape, table, confidence=confidence)
    except MissingKeyError as missing:
        if not isinstance(model, OnnxGraph) or not profile_missing:
            raise
        try:
            backend = table_backend(table)
        except HwcostError as e:
            log(f"   the derived network has nodes the table lacks, and they cannot be profiled here ({e})")
            raise missing from None
    table = _profile_missing_layers(table, [(model, shape)], backend, lambda s: log("   " + s))
    if table_path is not None and Path(table_path).is_file():
        save_table(table, table_path)
    return table, predict_network(model, shape, table, confidence=confidence)


NODE_ROUNDS = 3         # re-derivations around the derived network's node price, at most


def price_by_nodes(cfg, out: str | Path, result: dict, log: Callable[[str], None] = print,
                   profile_missing: bool = True) -> dict:
    """A search on a space node table (``hwcost profile --space S --keys nodes``): price the derived
    network by its own nodes -- exported, optimised by ONNX Runtime, each node from the table, through
    its in-context model -- and while that price lies outside the aimed band [floor B, B / u], derive
    again with the cost model scaled to it (the per-op costs are a fit; the network's nodes are not),
    at most :data:`NODE_ROUNDS` times. Nothing is measured but the nodes the table lacks (not even those
    when ``profile_missing`` is false). The result's ``derived.latency_ms`` becomes the node price
    (``latency_ms_model`` keeps the cost model's); ``nodes`` records every round, and ``nodes.kept``
    is the round of the network kept -- None when it was never priced (its pricing failed: it stands on
    the cost model's figure, ``nodes.stopped`` says why)."""
    from costmodels.node_tensor import is_space_node_table
    from device_tables import MissingKeyError
    from search.costs import _table
    from search.run import run_search
    if cfg.table is None or cfg.devices or "latency_ms" not in result.get("derived", {}):
        return result
    table = _table(cfg.table)         # the search's own copy, loaded once
    if not is_space_node_table(table):
        return result
    out = Path(out)
    given = (result.get("budgets_given") or {}).get("latency_ms")
    margin = result.get("confidence") or {}
    u, confidence = float(margin.get("upper_factor") or 1.0), margin.get("confidence")
    aim = given / u if given is not None else None
    floor = cfg.budget_floor * given if given is not None else None
    history, seen, stopped, inside = [], set(), None, True
    priced: list[tuple[dict, float]] = []    # (result, node price) of every round
    scale = 1.0                              # of the fitted model, relative to the table's own fit
    for r in range(NODE_ROUNDS + 1):
        arch = result.get("arch", result.get("genotype"))
        key = _arch_text(arch)
        seen.add(key)
        _, graph, shape = _build(cfg.space, cfg.network, arch, table)
        try:
            table, p = _priced(table, cfg.table, graph, shape, confidence, log, profile_missing)
        except (HwcostError, MissingKeyError) as e:
            # e.g. a table from another machine whose nodes this one cannot profile: the search's result
            # stands on the cost model's figure, said so, rather than lost to an error
            log(f"   node price: {e}; the cost model's figure stands")
            stopped = f"not priced by its nodes: {e}"
            break
        model_ms = float(result["derived"]["latency_ms"])
        ms = p.latency_ms
        inside = aim is None or floor <= ms <= aim
        history.append({"round": r, "model_ms": model_ms, "nodes_ms": ms, "low_ms": p.low_ms, "high_ms": p.high_ms,
                        "aimed_ms": aim, "floor_ms": floor, "in_band": inside, "arch": key})
        log(f"   priced by its {p.n_calls} ONNX Runtime nodes: {ms:.3f} ms (the op-cost fit said {model_ms:.3f} ms)"
            + ("" if aim is None else f"; aimed band [{floor:.3f}, {aim:.3f}]: {'inside' if inside else 'outside'}"))
        result["derived"]["latency_ms_model"] = model_ms
        result["derived"]["latency_ms"] = ms
        result["derived"]["latency_source"] = "the derived network's own ONNX Runtime nodes (node table)"
        if given is not None:
            result["within_budget"]["latency_ms"] = ms <= given
        priced.append((result, ms))
        if inside or r == NODE_ROUNDS:
            break
        if not (ms > 0 and model_ms > 0):
            stopped = "a non-positive price"
            break
        scale *= ms / model_ms          # each re-derivation scales the table's own fit afresh
        again = run_search(cfg, str(out), resume=True, progress=False,
                           correction={"scale": scale, "margin": 0.0, "basis": "nodes"})
        new = again.get("arch", again.get("genotype"))
        if _arch_text(new) in seen:
            stopped = "re-derived a network priced already"
            log("   the corrected costs derive a network priced already; stopping")
            break
        result = again
    if not inside and len(priced) > 1 and aim is not None:
        # none in the band: keep the priciest network under the aim (closest to the band from below),
        # else the cheapest one -- never the last one for being last
        under = [(res, ms) for res, ms in priced if ms <= aim]
        best = max(under, key=lambda t: t[1]) if under else min(priced, key=lambda t: t[1])
        if best[0] is not result:
            result = best[0]
            log(f"   keeping the network priced at {best[1]:.3f} ms (the closest to the band)")
    result["nodes"] = {"rounds": history, "met": inside, "rounds_used": max(len(history) - 1, 0), "stopped": stopped,
                       "kept": next((i for i, (res, _) in enumerate(priced) if res is result), None)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def search_priced_by_nodes(cfg, out: str, resume: bool = False, progress: bool = False) -> dict:
    """One search of a sweep (``hwcost sweep``'s search function): run it, and on a space node table price
    its derived network by its own nodes, re-deriving around that price (:func:`price_by_nodes`) without
    profiling anything -- the sweep's rows then carry the node price, as ``hwcost search`` would."""
    from search.run import run_search
    from search.sweep import PENDING
    result = run_search(cfg, out, resume=resume, progress=progress)   # (it wants its directory to itself)
    pending = Path(out) / PENDING          # until the rounds are done, result.json is not the final one
    pending.touch()
    result = price_by_nodes(cfg, out, result, log=lambda line: None, profile_missing=False)
    pending.unlink()
    return result


CANDLES = 3     # calibration networks measured again beside a derived network (the host's phase)


def candles(table, k: int = CANDLES) -> list[tuple]:
    """``k`` of the table's calibration networks, rebuilt, with what they measured when it was
    calibrated: (network, input shape, measured ms then). Timed again beside a derived network they
    say how fast the host runs *now* for networks of this kind -- a DARTS network's time drifted by
    up to +-12% over tens of minutes here while a lone convolution (the reference kernel) moved 3%."""
    from .calibrate import build_spec
    out = []
    for s in candle_samples(table, k):
        net, shape = build_spec(s.spec)
        out.append((net, shape, s.measured_ms))
    return out


def candle_samples(table, k: int = CANDLES) -> list:
    """The first ``k`` calibration networks of the table's in-context model (samples with a spec)."""
    from costmodels.incontext import model_of
    model = model_of(table)
    if model is None or k <= 0:
        return []
    return [s for s in model.samples if s.role == "calibration" and s.spec][:k]


def measure_beside_candles(models, table, backend, settings, sessions=1, k: int = CANDLES) -> list[tuple]:
    """Networks ``models`` ((network, input shape) ...) measured in the calibration's host phase: each
    run right after a run of one of ``k`` calibration networks of ``table`` (the candles, rotating;
    :meth:`Backend.measure_paired`), for ``settings.max_time_s`` per session, and brought to the phase the
    calibration measured them in (a run x its candle's time then / beside it). ``sessions`` > 1 (an int,
    or one per network) prepares a network that many times (new memory placement each) and pools their runs. Returns, per network,
    ``(in-phase measurement, the clock's, phase)``: ``phase`` = the candles' median now / then (> 1: the
    host ran slower than at calibration). Without a calibration (no candles) the networks are measured
    by the clock (:func:`profilers.profile.measure_models`), phase None.

    Why run by run: a shared host changes speed in phases of seconds; two runs milliseconds apart share
    one. On host F (2-vCPU AMD EPYC VM) 12 DARTS networks measured in three passes minutes apart: by the
    clock a network's passes agreed within 5% for 28-44% (ORT) / 4-29% (eager torch); timed run by run
    against a DARTS candle, for 100% (sd 0.9-1.5%) / 67-83% (sd 3.3-3.5%; eager torch's ~120 ms runs span
    more of a phase). A lone convolution as the candle: 28-61% on ORT, 33-83% on eager torch -- on ORT the
    candle must be of the networks' kind, which a calibration network is (benchmarks/paired_repeatability.py)."""
    import statistics

    from profilers.profile import measure_models, prepare_models, session_slices
    models = list(models)
    lit = candles(table, k)
    if not lit:
        return [(m, m, None) for m in measure_models(models, backend, settings, sessions)]
    with backend.active():
        fns = prepare_models(models, backend, sessions)
        lights = prepare_models([(n, sh) for n, sh, _ in lit], backend)
        pairs = backend.measure_paired(fns, lights, settings)
    then = [ms / 1e3 for _, _, ms in lit]
    out = []
    for a, b in session_slices(models, sessions):
        mine = pairs[a:b]
        pooled = sum(mine[1:], mine[0])
        meas, raw = pooled.in_phase(then, settings), pooled.raw(settings)
        meas.session_medians = [statistics.median(p.in_phase(then).samples) for p in mine]
        raw.session_medians = [statistics.median(p.times) for p in mine]
        meas.elapsed_s = raw.elapsed_s = sum(sum(p.times) + sum(p.candle_times) for p in mine)
        out.append((meas, raw, pooled.phase(then)))
    return out


def measure_in_phase(model, shape, table, backend, settings, sessions: int = SESSIONS, k: int = CANDLES):
    """A network measured on ``backend`` in ``sessions`` sessions, run by run beside ``k`` calibration
    networks of the table (:func:`measure_beside_candles`), and the host's reference kernel measured the
    same way: ``(measurement, the clock's measurement, reference, phase)``, ``phase`` = the candles' median
    now / then (None without a calibration: then the measurement is the clock's, the median of its
    sessions' quietest windows). When the host runs the candles slower now (phase > 1) the measurement
    is the runs brought to the calibration's speed; when faster, the runs at the calibration's speed x
    the phase: the quickest phase seen is the device's (a calibration measured in a slow phase is then
    corrected by the refit, not carried into the figure)."""
    import dataclasses

    from profilers.profile import reference_module
    (meas, raw, phase), (_, ref, _) = measure_beside_candles([(model, shape), reference_module()], table, backend,
                                                             settings, sessions=[sessions, 1], k=k)
    if phase is not None and phase < 1.0:
        meas = dataclasses.replace(meas, samples=[x * phase for x in meas.samples],
                                   session_medians=[x * phase for x in meas.session_medians])
    return meas, raw, ref, phase


def _measure_derived(model, shape, table, backend, settings, budget: float | None, floor: float | None,
                     confidence: float | None = None, prediction=None):
    """Measure a derived network on ``backend`` in the calibration's host phase (:func:`measure_in_phase`)
    and predict it with ``table``: (record, measurement, reference, prediction). The record's
    ``in_band`` is None without a budget; ``measured_ms`` is the phase-corrected figure,
    ``measured_raw_ms`` the clock's. ``prediction``: the network's on ``table``, when the caller has it."""
    from costmodels.predict import predict_network
    p = prediction or predict_network(model, shape, table, confidence=confidence)
    meas, raw, ref, phase = measure_in_phase(model, shape, table, backend, settings)
    ms = meas.median * 1e3
    rec = {"table_predicted_ms": p.latency_ms, "low_ms": p.low_ms, "high_ms": p.high_ms, "confidence": p.confidence,
           "measured_ms": ms, "measured_p10_ms": meas.p10 * 1e3, "measured_p90_ms": meas.p90 * 1e3,
           "measured_raw_ms": raw.median * 1e3, "phase": phase,
           "session_medians_ms": [v * 1e3 for v in (meas.session_medians or [])], "budget_ms": budget,
           "floor_ms": floor, "in_band": None if budget is None else floor <= ms <= budget,
           "reference_ms": ref.median * 1e3}
    return rec, meas, ref, p


def share_text(ms: float, budget: float, floor_ms: float | None = None) -> str:
    """``ms / budget`` as a whole percent, with one decimal where the whole percent would put it on the other
    side of an edge of the band [``floor_ms``, ``budget``] (84.6% under an 85% floor, not "85%")."""
    share = ms / budget
    low = floor_ms / budget if floor_ms else -math.inf
    inside = lambda x: low <= x <= 1.0          # noqa: E731  (the band, both edges in it)
    return f"{share:.0%}" if inside(round(share * 100) / 100) == inside(share) else f"{share:.1%}"


class VerifyPending(Exception):
    """A round's derived network waits for a measurement on a remote device: a bundle of it was
    written (``pending`` says which round, network and bundle); ``hwcost verify RUN --results R``
    continues the loop with the device's results."""

    def __init__(self, pending: dict):
        super().__init__(f"round {pending.get('round')} waits for the device's results of {pending.get('bundle')}")
        self.pending = pending


def _arch_key(result: dict) -> str:
    return _arch_text(result.get("genotype") if "genotype" in result else result.get("arch"))


def verify_search(cfg, out: str | Path, result: dict, rounds: int = DEFAULT_ROUNDS, settings=None,
                  log: Callable[[str], None] = print, finetune: int = DEFAULT_FINETUNE, measure=None) -> dict:
    """Measure the derived network; while it lies outside [floor * B, B], add it to the table's
    calibration and re-derive (at most ``rounds`` times). A re-derivation that leads back to a
    network measured already is tried once more after ``finetune`` search steps under the corrected
    costs (0: never). Returns the final result, with ``verify`` recording every round; writes it
    to ``out/result.json``.

    ``measure``: None measures on this machine, on the table's backend. Otherwise a callable
    ``(round, spec, model, shape, table, prediction, budget, floor) -> (record, measurement, reference)``
    (``hwcost.verify_remote.RemoteMeasure``: through a remote device's runner); it may raise
    :class:`VerifyPending` -- the loop then writes ``result.json`` with ``verify.pending`` and returns,
    and a later call with the same ``result`` (its pending rounds) continues where it stopped."""
    from costmodels.incontext import model_of
    from costmodels.node_tensor import is_space_node_table
    from device_tables import load_table, save_table
    from search.run import run_search

    from .calibrate import calibrate, fit_table, network_settings, sample_of, table_backend
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise HwcostError(f"--verify-rounds must be a non-negative integer, got {rounds!r}")
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise HwcostError(f"--verify-finetune must be a non-negative integer, got {finetune!r}")
    settings = settings or network_settings()
    out = Path(out)
    table_path = cfg.table
    table = load_table(table_path)
    backend = table_backend(table) if measure is None else None
    where_measured = backend.name if backend is not None else f"{table.device.get('name')} (remote, through its runner)"
    budget = result.get("budgets_given", result["budgets"]).get("latency_ms")
    floor = cfg.budget_floor * budget if budget is not None else None
    prior = result.get("verify") if (result.get("verify") or {}).get("pending") else {}
    history = list(prior.get("rounds") or [])   # a loop that waited for a remote device goes on
    seen, stopped = {h["arch"] for h in history}, None
    nodes_record = result.get("nodes")
    margin = result.get("confidence")          # the search's own (global) margin, kept in the result
    confidence = (margin or {}).get("confidence")
    for r in range(len(history), rounds + 1):
        arch = result.get("arch", result.get("genotype"))
        spec, model, shape = _build(cfg.space, cfg.network, arch, table)
        table, p = _priced(table, table_path, model, shape, confidence, log, profile_missing=measure is None)
        if measure is None:
            measured, meas, ref, p = _measure_derived(model, shape, table, backend, settings, budget, floor,
                                                      confidence, p)
        else:
            try:
                measured, meas, ref = measure(r, spec, model, shape, table, p, budget, floor)
            except VerifyPending as e:
                result["verify"] = {"rounds": history, "met": None, "rounds_used": len(history),
                                    "pending": {**e.pending, "round": r, "arch": _arch_text(arch)},
                                    "table": str(table_path), "backend": where_measured,
                                    "correction": (result.get("confidence") if result.get("confidence") is not margin
                                                   else prior.get("correction")),
                                    "limits": {"rounds": rounds, "finetune": finetune}}
                result["confidence"] = margin
                (out / "result.json").write_text(json.dumps(result, indent=1))
                return result
        ms, ref_ms = measured["measured_ms"], measured["reference_ms"]
        ref_cal = model_of(table).reference_ms if table.calibration is not None else None
        inside = measured["in_band"] is not False          # no budget: nothing to move towards
        rec = {"round": r, "predicted_ms": result["derived"]["latency_ms"], **measured, "in_band": inside,
               "host_vs_calibration": (ref_ms / ref_cal) if ref_cal and ref_ms else None, "arch": _arch_text(arch),
               "calibrated": p.calibrated}
        history.append(rec)
        where = ("" if budget is None else f" ({share_text(ms, budget, floor)} of the budget {budget:.3f} ms: "
                                           f"{'inside' if inside else 'outside'} [{floor:.3f}, {budget:.3f}])")
        log(f"   verify round {r}: predicted {predicted_text(rec)}, measured {ms:.3f} ms{where}"
            + (f"; the clock said {rec['measured_raw_ms']:.3f} ms, in a phase where calibration networks beside it "
               f"ran {rec['phase'] - 1:+.0%} against their calibrated time" if abs((rec.get("phase") or 1) - 1) > 0.02
               else ""))
        if ref_cal and ref_ms and ref_ms / ref_cal > HOST_SLOW and rec.get("phase") is None:
            # (with calibration networks run beside it, their phase above is what the figure was brought back by)
            log(f"   note: the host runs a reference kernel {ref_ms / ref_cal - 1:+.0%} slower than when the table was "
                f"calibrated: this measurement did not meet the host's quiet phase")
        if inside or r == rounds:
            break
        key = rec["arch"]
        seen.add(key)
        if table.calibration is None and measure is not None:
            raise HwcostError(f"{table_path} has no calibration: a remote device's table is calibrated by the "
                              f"networks its bundle measures (hwcost bundle --calibration-networks N)")
        if table.calibration is None:
            log(f"   the table has no calibration: measuring {FIRST_CALIBRATION} random networks of its space first")
            table, _ = calibrate(table, table_path, n=FIRST_CALIBRATION, seed=1000 + r, settings=settings,
                                 exclude=[spec], log=lambda s: log("   " + s))
        sample = sample_of(model, shape, table, meas, f"verify round {r}", spec, "verify", ref, prediction=p)
        table, model_ic = fit_table(table, [sample], keep_previous=True)
        save_table(table, table_path)
        # Neighbours of this network share most of its error: scale the refitted model to its measurement
        # and aim inside the band by the measurement's own spread (search.costs.local_correction).
        refit_ms = model_ic.predict(sample.features, sample.n_ops)   # = predict_network on the refitted table
        if is_space_node_table(table):   # the search's costs are a fit over the node-priced networks
            refit_ms = _cost_model_ms(cfg, table_path, arch)
        correction = {"scale": ms / refit_ms, "margin": local_margin(rec["session_medians_ms"] or [ms])}
        rec["correction"] = correction
        log(f"   added it to {table_path}'s calibration ({len(model_ic.samples)} networks; leave-one-out "
            f"{model_ic.mean:+.1%} +- {model_ic.std:.1%}); the refitted model predicts it at {refit_ms:.3f} ms: "
            f"deriving again with the model scaled by {correction['scale']:.3f}, aiming "
            f"{correction['margin']:.0%} inside the band")
        try:
            again = run_search(cfg, str(out), resume=True, progress=False, correction=correction)
        except HwcostError as e:     # e.g. the narrowed band holds no network of the space
            log(f"   re-derivation refused: {e}; stopping")
            stopped = f"re-derivation refused: {e}"
            break
        new_key = _arch_key(again)
        if new_key in seen and finetune:
            # the architecture weights still favour a network measured already: let them answer the
            # corrected costs for a few search steps, then derive again
            log(f"   the corrected costs derive a network measured already: fine-tuning the architecture weights "
                f"{finetune} steps under them")
            try:
                tuned = run_search(cfg, str(out), resume=True, progress=False, correction=correction,
                                   finetune=finetune)
            except HwcostError as e:
                log(f"   fine-tuning refused: {e}")
            else:
                again, new_key = tuned, _arch_key(tuned)
                f = rec["finetune"] = {**tuned["finetune"], "arch": new_key, "new_network": new_key not in seen}
                log(f"   expected latency under the corrected costs {f['expected_before'].get('latency_ms', 0):.3f} -> "
                    f"{f['expected_after'].get('latency_ms', 0):.3f} ms; it derives "
                    f"{'a new network' if f['new_network'] else 'a network measured already'}")
        if new_key in seen:
            # the corrected costs lead back to a network measured already: nothing new to learn. The
            # result stays the network of the last round, so result.json and verify.rounds agree.
            log("   the corrected costs derive a network measured already; stopping (a longer search or another "
                "budget may be needed)")
            stopped = "re-derived a network measured already" + (f" (after {finetune} fine-tuning steps)"
                                                                 if finetune else "")
            break
        result = again
    met = history[-1]["in_band"]
    if nodes_record is not None:      # the node-price rounds that chose the network of round 0
        result.setdefault("nodes", nodes_record)
    local = result.get("confidence") if result.get("confidence") is not margin else prior.get("correction")
    result["confidence"] = margin
    result["verify"] = {"rounds": history, "met": met, "rounds_used": len(history) - 1, "stopped": stopped,
                        "table": str(table_path), "backend": where_measured,
                        # the re-derivation that gave the result: budgets.latency_ms is its aim B (1 - d)
                        "correction": local}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _cost_model_ms(cfg, table_path, arch) -> float:
    """The search cost model's latency of ``arch`` on the table as it is now (rebuilt: it was refitted)."""
    from search.costs import derived_latency, search_cost_tensor
    from search.supernet import SupernetConfig
    from spaces.genotypes import genotype_from_dict
    ct, _ = search_cost_tensor(cfg.space, cfg.network, SupernetConfig(space=cfg.space).ops(), str(table_path))
    arch = genotype_from_dict(arch) if isinstance(arch, dict) else arch
    return float(derived_latency(cfg.space, arch, ct, None)["latency_ms_predicted"])


__all__ = ["DEFAULT_FINETUNE", "DEFAULT_ROUNDS", "VerifyPending", "price_by_nodes", "check_verifiable", "local_margin", "verify_default", "verify_search"]


def measure_devices(cfg, out: str | Path, result: dict, settings=None, log: Callable[[str], None] = print) -> dict:
    """A search over several devices: measure the derived network on every device whose table was
    profiled on this machine (same CPU, a local backend: :func:`verify_default`), beside what its table
    predicted; the others (a Raspberry Pi's table, a bundled one) keep their table's figure and say why.
    No re-derivation: with several budgets one device's measurement alone does not say which way to move.
    Records ``result["measured"]`` and rewrites ``out/result.json``."""
    from device_tables import load_table
    from search.costs import parse_devices

    from .calibrate import network_settings, table_backend
    settings = settings or network_settings()
    arch = result.get("arch", result.get("genotype"))
    budgets = result.get("budgets_given", result["budgets"])
    measured: dict = {}
    built = None
    for name, path in parse_devices(cfg.devices).items():
        metric = f"latency_ms@{name}"
        ok, why = verify_default(path)
        if not ok:
            measured[name] = {"measured_ms": None, "predicted_ms": result["derived"].get(metric),
                              "not_measured": why}
            continue
        table = load_table(path)
        backend = table_backend(table)
        built = built or _build(cfg.space, cfg.network, arch)      # one network, measured on each device
        log(f"measuring the derived network on {name} ({backend.name}, the backend of {path})")
        budget = budgets.get(metric)
        floor = cfg.budget_floor * budget if budget is not None else None
        rec, *_ = _measure_derived(built[1], built[2], table, backend, settings, budget, floor)
        measured[name] = {"predicted_ms": result["derived"].get(metric), **rec}
    result["measured"] = measured
    (Path(out) / "result.json").write_text(json.dumps(result, indent=1))
    return result
