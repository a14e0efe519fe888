"""Calibrate a device table: measure whole networks on its device, fit its in-context model.

    table --(N networks it did not score: random networks of its space, or other models)--> measured
          --> costmodels.incontext.fit_in_context --> table.calibration (written in place or to --out)

A pipeline (it measures, then models), so it lives here and not in costmodels
(which never measures) or profilers (which never models).  The networks are
measured with the table's backend and settings, all prepared first and then
timed in interleaved rounds, each keeping its quietest window
(``profilers.profile.measure_models``) -- the estimator the table's keys were
measured with.  What was measured is kept beside the output
(``OUT.calibration-samples.json``) until the calibrated table is written, so a
failed fit loses nothing.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Callable, Sequence

from device_tables import DeviceTable, save_table
from spaces.errors import HwcostError

DEFAULT_NETWORKS = 10
# The host's reference kernel this much slower than in the quietest phase of the table's profile: the
# calibration networks were not measured in the phase the table's keys were (nor a verify measurement in
# the calibration's, hwcost.verify).
HOST_SLOW = 1.05
# Measurements of the calibration networks (each all of them, interleaved with the reference kernel) taken
# at most while the host stays slower than that; the quietest is kept and, still slow, scaled back.
PHASE_TRIES = 3
# Models a layer table of a model is calibrated on (other models than the table's own).
DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_0", "shufflenet_v2_x1_0", "mnasnet0_5",
                  "mobilenet_v3_small", "googlenet", "efficientnet_b0", "regnet_x_400mf", "alexnet",
                  "resnet34", "mobilenet_v3_large")
_SPACE_NETWORK = {"darts": "cifar10", "sharpdarts": "cifar10"}
_REMOTE = ("onnxruntime",)   # backends recorded by the device runner: measured elsewhere


def network_settings(max_time_s: float = 3.0, passes: int = 10):
    from profilers.measure import Settings
    return Settings(max_time_s=max_time_s, passes=passes)


def is_remote_table(table: DeviceTable) -> bool:
    """Whether ``table`` was measured on a remote device through a bundle (its runner's results)."""
    return (table.runtime.get("backend") in _REMOTE or table.provenance.get("source") == "runner"
            or table.measurement.get("tool") == "hwcost runner")


def table_backend(table: DeviceTable, backend: str | None = None):
    """The backend that measured ``table``, with its settings; refuses another one or another host."""
    from profilers.backends import get_backend
    from profilers.environment import same_host
    rt = table.runtime
    name = rt.get("backend")
    if backend is not None and backend != name:
        raise HwcostError(f"table {table.source} was profiled on backend {name}; calibrating it on {backend} would "
                          f"fit one runtime's networks to another's ops (profile a {backend} table first)")
    if is_remote_table(table):
        raise HwcostError(f"table {table.source} was measured on a remote device through a bundle; its networks "
                          f"are measured there too, through bundles: `hwcost bundle --calibration-networks N` "
                          f"calibrates it, `hwcost verify RUN` verifies a search's network on it (or with --ssh)")
    same, why = same_host(table.device)
    if not same:
        raise HwcostError(f"table {table.source}: {why}; calibrating here would mix two machines' timings "
                          f"(profile this host first: hwcost profile ...)")
    kwargs = {}
    if name == "ort-cpu" and rt.get("graph_optimization"):
        kwargs["graph_optimization"] = rt["graph_optimization"]
    return get_backend(name, threads=int(rt.get("threads") or 1), batch=int(rt.get("batch") or 1),
                       dtype=rt.get("dtype") or "float32", **kwargs)


# ---------------------------------------------------------------------------------------------
# Which networks


def eval_network(space: str, networks: Sequence[str], network: str | None = None) -> str:
    """The network configuration calibration networks are built in: ``network`` if given, else the
    deployed one among those a table was profiled for (cifar10, else the last that is not a search
    proxy), else the space's default."""
    if network is not None:
        return network
    if "cifar10" in networks:
        return "cifar10"
    evals = [n for n in networks if not str(n).endswith("-search")]
    return str(evals[-1]) if evals else _SPACE_NETWORK.get(space, "cifar10")


def _unique(specs: list[dict], spec: dict, exclude: set[str]) -> None:
    key = json.dumps(spec, sort_keys=True)
    if key not in exclude and key not in {json.dumps(s, sort_keys=True) for s in specs}:
        specs.append(spec)


def space_specs(space: str, network: str, n: int, seed: int = 0, exclude: Sequence[dict] = (),
                skew: float | None = None) -> list[dict]:
    """``n`` distinct random derived networks of ``space`` (never one of ``exclude``); ``skew``: each
    cell's ops drawn from its own Dirichlet(``skew``) mix (:func:`spaces.genotypes.random_genotype`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise HwcostError(f"--networks must be at least 2 (a fit and a held-out residual), got {n!r}")
    rng = random.Random(seed)
    excluded = {json.dumps(e, sort_keys=True) for e in exclude}
    specs: list[dict] = []
    if space == "nb201":
        from spaces.nb201_arch import all_archs
        archs = all_archs()
        draw = lambda: arch_spec("nb201", "cifar10", rng.choice(archs).to_str())  # noqa: E731
    else:
        from spaces import random_genotype
        draw = lambda: arch_spec(space, network, random_genotype(rng, space, skew=skew))  # noqa: E731
    for _ in range(100 * n):
        _unique(specs, draw(), excluded)
        if len(specs) == n:
            break
    return specs


def network_specs(table: DeviceTable, n: int = DEFAULT_NETWORKS, seed: int = 0, network: str | None = None,
                  models: Sequence[str] | None = None, exclude: Sequence[dict] = (),
                  skew: float | None = None) -> list[dict]:
    """``n`` calibration networks for ``table`` (never one of ``exclude``): random derived
    networks of its space, or for a layer table (``torch``) or node table (``onnx``) of a model,
    other models than the one it was profiled for (for a node table, exported to ONNX)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise HwcostError(f"--networks must be at least 2 (a fit and a held-out residual), got {n!r}")
    if table.kind != "op":
        raise HwcostError(f"table {table.source} is architecture-level: its entries are whole networks already; "
                          f"calibration is for op-level tables")
    space = table.spaces[0]
    node_space = table.provenance.get("space") if space == "onnx" else None
    if node_space:     # a node table of a search space: random networks of that space, exported to ONNX
        if models:
            raise HwcostError(f"table {table.source} keys the nodes of {node_space} networks; it is calibrated on "
                              f"random networks of that space, not on --models")
        plain = [{k: v for k, v in e.items() if k != "graph"} for e in exclude]
        specs = space_specs(str(node_space), network or str(table.provenance.get("network") or "cifar10"), n, seed, plain,
                            skew)
        return [{**s, "graph": "onnx"} for s in specs]
    if space in ("torch", "onnx"):
        excluded = {json.dumps(e, sort_keys=True) for e in exclude}
        specs: list[dict] = []
        own = str(table.provenance.get("model", ""))
        names = list(models) if models else [f"torchvision:{m}" for m in DEFAULT_MODELS]
        shape = table.provenance.get("input") or [int(table.runtime.get("batch") or 1), 3, 224, 224]
        for m in names:
            if m != own:
                spec = {"kind": "model", "model": m, "input": list(shape)}
                if space == "onnx":     # a node table: the model exported, keyed by the nodes ORT runs
                    spec["graph"] = "onnx"
                _unique(specs, spec, excluded)
            if len(specs) == n:
                break
        if len(specs) < 2:
            raise HwcostError(f"table {table.source} needs at least 2 other models to calibrate on; give --models")
        return specs
    if models:
        raise HwcostError("--models calibrates a layer table of a model; a space's table is calibrated on random "
                          "networks of its space")
    net = eval_network(space, table.provenance.get("networks") or [], network)
    return space_specs(space, net, n, seed, exclude, skew)


def arch_spec(space: str, network: str, arch) -> dict:
    """The spec of a derived network of ``space`` (an NB201 string; a ``Genotype`` or its dict)."""
    if space == "nb201":
        return {"kind": "nb201", "arch": str(arch)}
    from spaces.genotypes import genotype_from_dict
    g = genotype_from_dict(arch) if isinstance(arch, dict) else arch
    return {"kind": "genotype", "space": space, "network": network, "genotype": g.to_dict()}


def spec_name(spec: dict) -> str:
    if spec["kind"] == "model":
        return spec["model"]
    if spec["kind"] == "nb201":
        return spec["arch"]
    return f"{spec['space']} {spec['network']} genotype"


def build_spec(spec: dict):
    """(model, input shape) of a calibration network spec."""
    import torch
    from spaces import Nb201NetConfig, build_network, network_config
    from spaces.genotypes import genotype_from_dict
    torch.manual_seed(0)
    if spec["kind"] == "model":
        from profilers.shapes import resolve_model
        model, shape = resolve_model(spec["model"]).eval(), tuple(spec["input"])
        if spec.get("graph") == "onnx":
            from profilers.export import export_graph
            return export_graph(model, shape, spec["model"]), shape
        return model, shape
    if spec["kind"] == "nb201":
        net = build_network(Nb201NetConfig(arch=spec["arch"]))
    else:
        g = genotype_from_dict(spec["genotype"]).validate(spec["space"])
        net = build_network(network_config(spec["network"], g, spec["space"]))
    shape = tuple(net.input_shape(1))
    if spec.get("graph") == "onnx":    # a node table of the space: the network as ONNX Runtime runs it
        from profilers.export import export_graph
        return export_graph(net.eval(), shape, spec_name(spec)), shape
    return net, shape


# ---------------------------------------------------------------------------------------------
# Measuring and fitting


def sample_of(model, shape, table: DeviceTable, measurement, name: str, spec: dict, role: str = "calibration",
              reference=None, prediction=None):
    """A :class:`~costmodels.incontext.Sample`: the network's op-group times from ``table`` and its
    measured latency (``Measurement``s in seconds: the network's and the host reference kernel's).
    ``prediction``: the network's ``predict_network`` on ``table`` when the caller has it already
    (its per-key rows do not depend on the calibration)."""
    from costmodels.incontext import Sample
    from costmodels.predict import predict_network
    p = prediction or predict_network(model, shape, table, incontext=None)
    return Sample.of_rows(name, p.per_key, measurement.median * 1e3, spec, streamed=p.streamed,
                          p10_ms=measurement.p10 * 1e3, p90_ms=measurement.p90 * 1e3, role=role,
                          reference_ms=reference.median * 1e3 if reference is not None else None)


def _profile_missing_layers(table: DeviceTable, built, backend, log) -> DeviceTable:
    """A layer (node) table gains the layers (ORT nodes) of the calibration models it lacks, measured
    now as ``hwcost profile --model`` would: the models must be priced by the table to be fitted."""
    import tempfile

    from costmodels.predict import runtime_fusion_level
    from device_tables import merge_tables
    from profilers.profile import jobs_for, profile
    jobs, seen = [], set()
    level = runtime_fusion_level(table)
    for model, shape in built:
        for j in jobs_for(model, shape, level, backend.session_providers()):
            if j.key not in table and j.key not in seen:
                seen.add(j.key)
                jobs.append(j)
    if not jobs:
        return table
    what = "nodes" if table.spaces == ["onnx"] else "layers"
    log(f"profiling {len(jobs)} {what} of the calibration models that the table lacks")
    with tempfile.TemporaryDirectory(prefix="hwcost-calibrate-") as tmp:
        # the new entries record their weight bytes; the table's own weight-stream probe prices them when
        # it has one, else the profile measures one if the new layers hold large weights
        has_probe = "weight_stream" in table.measurement
        extra = profile(jobs, backend, Path(tmp) / "layers.json", spaces=list(table.spaces), progress=False,
                        settings=table_settings(table), provenance={"by": "hwcost calibrate"},
                        stream_bytes=0 if has_probe else None, context=table.measurement.get("context", "alone"))
    merged, _ = merge_tables([table, extra], force=True)
    measurement = dict(table.measurement)
    if not has_probe and "weight_stream" in extra.measurement:
        measurement["weight_stream"] = extra.measurement["weight_stream"]
    return dataclasses.replace(merged, device=table.device, measurement=measurement, created=table.created,
                               provenance=table.provenance, source=table.source, calibration=table.calibration)


def table_settings(table: DeviceTable):
    """The measurement settings a table was profiled with (``measurement``; defaults where it records none),
    so that keys added to it are timed as its own were."""
    from profilers.measure import Settings
    fields = {f.name for f in dataclasses.fields(Settings)}
    recorded = {k: v for k, v in (table.measurement or {}).items() if k in fields}
    try:
        return Settings(**recorded)
    except HwcostError:
        return Settings()


def quiet_reference_ms(table: DeviceTable) -> float | None:
    """The host reference kernel's time in the quietest phase of the table's profile (the fastest of its
    timings beside the passes, ``measurement.host_reference``; each key kept its quietest pass), or None
    when the table has none (imported, or profiled before hwcost timed one)."""
    ref = (table.measurement or {}).get("host_reference")
    ms = ref.get("median_ms") if isinstance(ref, dict) else None
    if not isinstance(ms, list):
        return None
    ms = [float(v) for v in ms if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return min(ms) if ms else None


def _scaled(meas, phase: float):
    """A measurement brought back to a host ``phase`` times faster (every sample divided by it)."""
    return dataclasses.replace(
        meas, samples=[x / phase for x in meas.samples],
        pass_medians=[x / phase for x in meas.pass_medians] if meas.pass_medians else meas.pass_medians,
        session_medians=[x / phase for x in meas.session_medians] if meas.session_medians else meas.session_medians)


def measure_in_table_phase(table: DeviceTable, built, backend, settings, log: Callable[[str], None] = print):
    """Measure ``built`` networks whole (interleaved, with the host reference kernel) in the phase the
    table's keys were measured in: while the reference runs more than :data:`HOST_SLOW` slower than in
    the quietest phase of the table's profile, measure all of them again (up to :data:`PHASE_TRIES`
    times, keeping the try whose reference ran fastest); still slower, divide the networks' times by the
    reference's slowdown (a calibration measured in a slow phase carries it into every prediction: on
    host E, calibrated with the reference 1.52x slower than in the profile's quietest phase, DARTS networks
    measured 1.2-2.0x their ops' sum, median 1.75x; calibrated in the profile's phase the session before,
    about 1.3x). Returns (measurements, reference, phase: the factor divided by, or None)."""
    from profilers.profile import measure_models_with_reference
    quiet = quiet_reference_ms(table)
    best = None
    for i in range(PHASE_TRIES if quiet else 1):
        measured, ref = measure_models_with_reference(list(built), backend, settings)
        if best is None or ref.median < best[1].median:
            best = (measured, ref)
        slow = best[1].median * 1e3 / quiet if quiet else 1.0
        if slow <= HOST_SLOW:
            break
        if i + 1 < PHASE_TRIES:
            log(f"the host runs its reference kernel {slow:.2f}x slower than in the quiet phase of the table's "
                f"profile ({best[1].median * 1e3:.3f} vs {quiet:.3f} ms): measuring the networks again "
                f"({i + 2} of {PHASE_TRIES})")
    measured, ref = best
    slow = ref.median * 1e3 / quiet if quiet else 1.0
    if slow <= HOST_SLOW:
        return measured, ref, None
    log(f"warning: the quiet phase of the table's profile never came in {PHASE_TRIES} measurements (reference "
        f"kernel {slow:.2f}x slower at best); the networks' times are divided by {slow:.3f} to stand for that "
        f"phase -- calibrate again on a quieter host to measure them there")
    return [_scaled(m, slow) for m in measured], ref, slow


def levelled_by_pairs(built, measured, backend, settings, log: Callable[[str], None] = lambda s: None) -> list:
    """Networks of one space measured window by window (``measured``), made consistent with each other: every
    network but the first is timed again run by run, each run right after a run of the first (the anchor;
    :meth:`Backend.measure_paired`, ``settings.max_time_s`` each), and its figure becomes its median run / the
    anchor's run x the anchor's level -- the level that matches the windows best (the median over the networks
    of window figure / ratio). The windows set the level (the table's phase); the runs set the ratios, which a
    host's phases do not move: on host F (2-vCPU AMD EPYC VM) a DARTS network's quietest window agreed with
    another pass's within 5% for 28-44% of networks, its median run / a DARTS network's run just before for
    100% (benchmarks/paired_repeatability.py). Returns the measurements, in seconds, in ``measured``'s order."""
    import statistics

    from profilers.profile import prepare_models
    with backend.active():
        fns = prepare_models(list(built), backend)
        pairs = backend.measure_paired(fns[1:], fns[:1], settings)
    ratios = [1.0] + [p.in_phase([1.0]).median for p in pairs]
    level = statistics.median(m.median / r for m, r in zip(measured, ratios))
    out = [_scaled(measured[0], measured[0].median / level)]
    for p in pairs:
        m = p.in_phase([level], measured[0].settings)
        m.elapsed_s = sum(p.times) + sum(p.candle_times)
        out.append(m)
    moved = [b.median / a.median for a, b in zip(measured, out)]
    log(f"levelled by runs beside the first network ({len(pairs)} networks, {settings.max_time_s:g} s each): "
        f"the window figures moved by a median {statistics.median(abs(x - 1) for x in moved):.1%} "
        f"(at most {max(abs(x - 1) for x in moved):.1%})")
    return out


def measure_specs(table: DeviceTable, specs: Sequence[dict], backend, settings=None,
                  log: Callable[[str], None] = lambda s: None, role: str = "calibration"):
    """Measure the networks of ``specs`` whole on ``backend`` (interleaved, in the table's host phase:
    :func:`measure_in_table_phase`); returns (table, samples) -- the table gains missing layers when it
    is a layer table."""
    settings = settings or network_settings()
    built = [build_spec(s) for s in specs]
    if table.spaces in (["torch"], ["onnx"]):
        table = _profile_missing_layers(table, built, backend, log)
    log(f"measuring {len(built)} networks whole on {backend.name} ({settings.passes} interleaved rounds)")
    measured, ref, phase = measure_in_table_phase(table, built, backend, settings, log)
    if len(built) >= 2 and all(s.get("kind") != "model" for s in specs):
        measured = levelled_by_pairs(built, measured, backend, settings, log)
    samples = [sample_of(m, shape, table, meas, spec_name(s), s, role, ref)
               for (m, shape), meas, s in zip(built, measured, specs)]
    for smp in samples:
        smp.phase = phase
    return table, samples


def fit_table(table: DeviceTable, samples, keep_previous: bool = False) -> tuple[DeviceTable, object]:
    """The table with an in-context model fitted on ``samples`` (plus its previous calibration
    networks when ``keep_previous``)."""
    from costmodels.incontext import fit_in_context, model_of
    from costmodels.predict import Overhead
    from device_tables.table import now_iso
    from profilers.environment import cpu_id, cpu_model
    samples = list(samples)
    if keep_previous:
        old = model_of(table)
        if old is not None:
            samples = list(old.samples) + samples
    per_call = Overhead.from_table(table).per_call_ms
    # a remote device's networks were measured there: the host is the table's device, not this machine
    host = ({"cpu": table.device.get("cpu") or table.device.get("name"), "device": table.device.get("name")}
            if table.provenance.get("source") == "runner" else {"cpu": cpu_model(), "cpu_id": cpu_id()})
    model = fit_in_context(samples, per_call, backend=str(table.runtime.get("backend")), host=host,
                           created=now_iso())
    return dataclasses.replace(table, calibration=model.to_json()), model


def bundle_networks(space: str, networks: Sequence[str], n: int, seed: int = 0,
                    network: str | None = None, batch: int = 1) -> list[tuple]:
    """(name, spec, module, input shape) of ``n`` random networks of ``space`` for a bundle to carry
    (``hwcost bundle --calibration-networks``): the device measures them whole after the keys."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise HwcostError(f"--calibration-networks must be 0 (none) or at least 2 (a fit and a held-out "
                          f"residual), got {n!r}")
    if network is not None and network not in networks and space != "nb201":
        raise HwcostError(f"--calibrate-on {network}: the bundle measures the ops of {', '.join(networks)} only")
    specs = space_specs(space, eval_network(space, networks, network), n, seed)
    out = []
    for s in specs:
        model, shape = build_spec(s)
        out.append((spec_name(s), s, model, (batch, *shape[1:])))
    return out


def fit_remote(table: DeviceTable, rows: Sequence[dict]) -> tuple[DeviceTable, object]:
    """The imported table of a remote device with its in-context model, fitted on the whole networks
    the runner measured there (``profilers.bundle.calibration_rows``)."""
    from types import SimpleNamespace
    if len(rows) < 2:
        raise HwcostError(f"the runner measured {len(rows)} calibration network(s); at least 2 are needed to fit "
                          f"and hold one out")
    samples = []
    for r in rows:
        model, shape = build_spec(r["spec"])
        meas = SimpleNamespace(median=r["median_ms"] / 1e3, p10=r["p10_ms"] / 1e3, p90=r["p90_ms"] / 1e3)
        try:
            samples.append(sample_of(model, shape, table, meas, r["name"], r["spec"]))
        except KeyError as e:
            raise HwcostError(f"calibration network {r['name']}: the table lacks its op {e}; was the bundle made "
                              f"for the same networks?") from None
    return fit_table(table, samples)


def calibrate(table: DeviceTable, out: str | Path, n: int = DEFAULT_NETWORKS, seed: int = 0,
              network: str | None = None, models: Sequence[str] | None = None, backend: str | None = None,
              settings=None, exclude: Sequence[dict] = (), log: Callable[[str], None] = print,
              skew: float | None = None):
    """Measure ``n`` networks, fit, write the calibrated table to ``out``; returns (table, model).
    ``skew``: random networks of a space drawn with skewed op mixes (:func:`space_specs`)."""
    be = table_backend(table, backend)
    specs = network_specs(table, n, seed, network, models, exclude, skew)
    table, samples = measure_specs(table, specs, be, settings, log)
    side = Path(str(out) + ".calibration-samples.json")
    side.write_text(json.dumps([s.to_json() for s in samples], indent=1) + "\n")
    table, model = fit_table(table, samples)
    save_table(table, out)
    side.unlink(missing_ok=True)
    return table, model


__all__ = ["DEFAULT_MODELS", "DEFAULT_NETWORKS", "HOST_SLOW", "arch_spec", "build_spec", "calibrate", "fit_table", "measure_specs",
           "network_settings", "network_specs", "sample_of", "spec_name", "table_backend"]
