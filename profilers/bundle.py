"""Remote profiling: a zip of ONNX op models for a board or phone, and its results as a table.

    write_bundle(keys, "bundle.zip")      # here: one ONNX model per op key + manifest + runner
    python3 bundle.zip --out results.json # there: needs only Python, numpy, onnxruntime
    import_results("results.json")        # here: -> an op-level DeviceTable

The bundle is a runnable zip (its ``__main__.py`` starts the runner), so the
user copies one file. ``unzip -j bundle.zip runner.py`` gives the runner as a
plain script, for ``python3 runner.py bundle.zip --out results.json``.
``run_over_ssh`` does the copy, the run and the fetch with ``scp``/``ssh``.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from device_tables._io import read_json, typed_field as _field
from device_tables.errors import TableError
from device_tables.keys import OpKey
from device_tables.table import DeviceTable, Entry, now_iso
from spaces.errors import HwcostError

from . import runner
from .export import DEFAULT_OPSET, export_onnx

RUNNER_PATH = Path(runner.__file__)
# Runs the bundle as a zip application: `python3 bundle.zip --out results.json`.
_ZIP_MAIN = (
    "import sys\n"
    "from runner import main\n"
    "sys.exit(main([sys.argv[0]] + sys.argv[1:]))\n"
)
_README = """hwcost profiling bundle: {n} op models ({spaces}){nets}, ONNX opset {opset}.

On the device (Python 3.8+):   pip install numpy onnxruntime
Run it:                        python3 {name} --out results.json
or, with the runner unzipped:  unzip -j {name} runner.py && python3 runner.py {name} --out results.json
Options: --threads N  --rel-ci 0.02  --max-time 2  --provider NAME  --resume (after an interruption)
Back on the host:              {back}
"""
# Remote paths that scp reads the same way in its SFTP and legacy modes (no shell expansion).
_SAFE_REMOTE = re.compile(r"[A-Za-z0-9._+/-]+")
_HOST = re.compile(r"(?:[A-Za-z0-9._%+-]+@)?(?:[A-Za-z0-9_.][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])")
_EMPTY_MODEL = "models/call_overhead_empty.onnx"
_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


@dataclass(frozen=True)
class BundleInfo:
    path: str
    n_keys: int
    bytes: int


def _model_inputs(proto) -> list[dict]:
    """Name, static shape and dtype of each graph input (initializers excluded)."""
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        if any(d < 1 for d in shape) or t.elem_type not in _ONNX_DTYPES:
            raise HwcostError(f"input {vi.name!r} of the exported model has no static shape/dtype "
                              f"({shape}, elem_type {t.elem_type}); the runner needs fixed shapes")
        out.append({"name": vi.name, "shape": shape, "dtype": _ONNX_DTYPES[t.elem_type]})
    return out


def write_bundle(keys: Iterable[OpKey], out_zip: str | os.PathLike, opset: int = DEFAULT_OPSET,
                 settings: dict | None = None, networks: Sequence[str] = (), atol: float = 1e-3,
                 progress: Callable[[int, int, OpKey], None] | None = None,
                 calibration: Sequence[tuple] = (),
                 back_on_host: str = "hwcost table import results.json --out device.json") -> BundleInfo:
    """Export every key's op module to ONNX, check it, and zip models + manifest + runner.

    ``settings`` are the runner's defaults (threads, rel_ci, max_time_s, ...;
    see ``runner.DEFAULT_SETTINGS``); the command line on the device overrides them.
    ``calibration``: (name, spec, module, input shape) of whole networks the runner
    times after the keys, for the table's in-context model (``hwcost table import``); a bundle of
    such networks alone (no keys) is what ``hwcost verify`` sends a remote device. ``back_on_host``:
    the command its README.txt names for the results.
    The zip is written atomically: an interrupted export leaves no half bundle.
    """
    import onnx
    import torch

    from .shapes import key_module

    keys, calibration = list(keys), list(calibration)
    if not keys and not calibration:
        raise HwcostError("no op keys to bundle")
    for k in keys:
        if not isinstance(k, OpKey):
            raise HwcostError(f"a bundle holds op keys, got {type(k).__name__} {k}")
    if len(set(keys)) != len(keys):
        raise HwcostError("the same op key is listed twice")
    try:
        settings = runner.check_settings(dict(settings or {}), "bundle settings")
    except runner.RunnerError as e:
        raise HwcostError(str(e)) from None
    out_zip = Path(out_zip)
    if not out_zip.resolve().parent.is_dir():
        raise HwcostError(f"cannot write {out_zip}: directory {out_zip.resolve().parent} does not exist")
    entries = []
    fd, tmp_zip = tempfile.mkstemp(dir=out_zip.resolve().parent, prefix=f".{out_zip.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, key in enumerate(keys):
                if progress:
                    progress(i, len(keys), key)
                module, inputs = key_module(key)
                path = os.path.join(tmp, f"{i}.onnx")
                try:
                    res = export_onnx(module, inputs, path, opset=opset, check=True, atol=atol)
                except HwcostError as e:
                    raise HwcostError(f"{key}: {e}") from None
                name = f"models/{i:04d}_{key.op}.onnx"
                zf.write(path, name)
                entries.append({"key": key.to_str(), "model": name, "inputs": _model_inputs(onnx.load(path)),
                                "nodes": res.n_nodes, "max_abs_diff": res.max_abs_diff})
            nets = []
            for i, (name, spec, module, shape) in enumerate(calibration):
                path = os.path.join(tmp, f"net{i}.onnx")
                try:
                    export_onnx(module.eval(), (torch.randn(*shape),), path, opset=opset, check=True, atol=atol)
                except HwcostError as e:
                    raise HwcostError(f"calibration network {name}: {e}") from None
                zf.write(path, f"networks/{i:03d}.onnx")
                nets.append({"name": f"{i:03d} {name}", "spec": spec, "model": f"networks/{i:03d}.onnx",
                             "inputs": _model_inputs(onnx.load(path))})
            # a bundle of whole networks only (verify): the networks' batch
            batches = sorted({k.batch for k in keys} or {int(shape[0]) for _, _, _, shape in calibration})
            # the empty op a local ORT profile times for measurement.call_overhead_ms, so the runner records it too
            from .backends import _Empty
            path = os.path.join(tmp, "empty.onnx")
            try:
                export_onnx(_Empty(), (torch.zeros(batches[0], 1),), path, opset=opset, check=True, atol=atol)
            except HwcostError as e:
                raise HwcostError(f"the empty op (call overhead): {e}") from None
            zf.write(path, _EMPTY_MODEL)
            call_overhead = {"model": _EMPTY_MODEL, "inputs": _model_inputs(onnx.load(path)),
                             "op": f"x + 0 on a ({batches[0]}, 1) tensor: an empty op, timed as every key is"}
            manifest = {
                "format": runner.MANIFEST_FORMAT, "version": max(runner.MANIFEST_VERSIONS), "created": now_iso(),
                "producer": {"tool": "hwcost", "torch": torch.__version__, "onnx": onnx.__version__, "opset": opset},
                "spaces": sorted({k.space for k in keys} or {c[1].get("space") for c in calibration} - {None}),
                "networks": list(networks),
                "dtype": "float32", "batch": batches[0] if len(batches) == 1 else None,
                "settings": settings, "call_overhead": call_overhead, "keys": entries,
                **({"calibration": nets} if nets else {}),
            }
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, allow_nan=False))
            zf.write(RUNNER_PATH, "runner.py")
            zf.writestr("__main__.py", _ZIP_MAIN)
            zf.writestr("README.txt", _README.format(
                n=len(keys), spaces=", ".join(manifest["spaces"]), opset=opset, name=out_zip.name,
                nets=f" and {len(nets)} whole networks" if nets else "", back=back_on_host))
        os.replace(tmp_zip, out_zip)
    except BaseException:
        if os.path.exists(tmp_zip):
            os.unlink(tmp_zip)
        raise
    return BundleInfo(str(out_zip), len(keys), out_zip.stat().st_size)


# ---------------------------------------------------------------- results -> table

def import_results(results_json: str | os.PathLike, allow_failed: bool = False,
                   device_name: str | None = None) -> DeviceTable:
    """Turn a runner's results.json into an op-level device table, validating every field.

    Keys the device could not run are an error unless ``allow_failed`` (then
    they are left out of the table and listed under provenance.failed): a
    table that silently lacks ops would under-count latency.
    """
    return import_runner_results(results_json, allow_failed, device_name)[0]


def import_runner_results(results_json: str | os.PathLike, allow_failed: bool = False,
                          device_name: str | None = None) -> tuple[DeviceTable, list[dict]]:
    """:func:`import_results`, and the whole networks the runner measured for calibration
    (:func:`calibration_rows`), from one reading of the file."""
    path = Path(results_json)
    try:
        doc = read_json(path)
        table = _import(doc, path, allow_failed, device_name)
        return table, calibration_rows(doc)
    except TableError as e:
        raise TableError(f"results {path}: {e}") from None


def _objects(rows: list, label: str):
    """(index, row) of a list that must hold objects; one error naming the first that is not."""
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise TableError(f"{label}[{i}]: must be an object")
        yield i, r


def _import(doc, path: Path, allow_failed: bool, device_name: str | None) -> DeviceTable:
    if not isinstance(doc, dict) or doc.get("format") != runner.RESULTS_FORMAT:
        raise TableError(f"not a runner results file (expected \"format\": \"{runner.RESULTS_FORMAT}\")")
    if doc.get("version") != runner.RESULTS_VERSION:
        raise TableError(f"results version {doc.get('version')!r} is not supported (this hwcost reads "
                         f"{runner.RESULTS_VERSION}); import with a matching hwcost")
    env = _field(doc, "environment", dict, "")
    settings = _field(doc, "settings", dict, "")
    bundle = _field(doc, "bundle", dict, "")
    rows = _field(doc, "results", list, "")
    failed = _field(doc, "failed", list, "")
    if failed and not allow_failed:
        first = failed[0] if isinstance(failed[0], dict) else {}
        raise TableError(f"{len(failed)} key(s) failed on the device, e.g. {first.get('key')}: "
                         f"{first.get('error')}; pass --allow-failed to import the others")
    if not rows:
        raise TableError("no measured keys")
    entries = []
    for i, r in _objects(rows, "results"):
        key_text = _field(r, "key", str, f"results[{i}].")
        where = f"results[{i}] ({key_text}): "
        try:
            key = OpKey.from_str(key_text)
            extra = {name: r[name] for name in ("runs_per_sample", "rel_ci", "iqr_ms", "min_ms", "passes",
                                                "quietest_pass", "pass_medians_ms") if r.get(name) is not None}
            entries.append(Entry(key, r.get("median_ms"), r.get("p10_ms"), r.get("p90_ms"), r.get("n"),
                                 r.get("quality"), extra))
        except TableError as e:
            raise TableError(f"{where}{e}") from None
    provider = _field(env, "provider", str, "environment.")
    threads = _field(env, "threads", int, "environment.")
    name = device_name or _field(env, "device_name", str, "environment.")
    device = {"name": name, **{k: env[k] for k in ("cpu_model", "board", "android_model", "android_manufacturer",
                                                    "cores", "usable_cores", "machine", "platform")
                               if env.get(k) is not None}}
    if isinstance(env.get("cpu_model"), str):
        device["cpu"] = env["cpu_model"]  # the field a local profile names the CPU by
    batches = {e.key.batch for e in entries}
    batch = batches.pop() if len(batches) == 1 else None
    # the name a local profile records for the same runtime (older runners recorded none: the importer
    # used "onnxruntime"), so that a runner's table and a local ort-cpu one are one backend
    runtime = {"backend": runner.backend_name(provider), "backend_version": str(env.get("onnxruntime")),
               "execution_provider": provider, "threads": threads, "dtype": bundle.get("dtype") or "float32",
               "batch": batch, "python": env.get("python"), "numpy": env.get("numpy")}
    measurement = {"tool": "hwcost runner", "statistic": "median of samples of k back-to-back runs",
                   "ci": "distribution-free 95% CI of the median (order statistics)",
                   **{k: settings.get(k) for k in ("rel_ci", "max_time_s", "warmup_s", "min_sample_s",
                                                   "min_samples", "noisy_iqr", "passes")},
                   "timer": env.get("timer"), "timer_overhead_s": env.get("timer_overhead_s"),
                   # the runner always times each op model alone in its own session (as ort-cpu profiles)
                   "isolation": runner.ISOLATION}
    provenance = {"source": "runner", "results_file": path.name, "bundle_id": bundle.get("id"),
                  "bundle_created": bundle.get("created"), "networks": bundle.get("networks"),
                  "started": doc.get("started"), "finished": doc.get("finished")}
    measurement.update(_call_overhead(doc, provenance))
    if failed:
        provenance["failed"] = failed
    if isinstance(doc.get("calibration"), list):
        provenance["calibration_networks"] = sum("error" not in r for r in doc["calibration"] if isinstance(r, dict))
    finished = doc.get("finished")
    return DeviceTable(kind="op", spaces=sorted({e.key.space for e in entries}), device=device, runtime=runtime,
                       entries=tuple(entries), measurement=measurement,
                       created=finished if isinstance(finished, str) else now_iso(),
                       provenance=provenance, source=str(path))


def calibration_rows(doc: dict) -> list[dict]:
    """The whole networks a runner measured (results ``calibration``), validated: name, spec and a
    positive median (and p10/p90) in ms each; a network the device failed is left out. The caller
    (``hwcost table import``) fits the table's in-context model on them."""
    rows = doc.get("calibration")
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise TableError("calibration: expected a list of measured networks")
    out = []
    for i, r in _objects(rows, "calibration"):
        where = f"calibration[{i}]."
        name, spec = _field(r, "name", str, where), _field(r, "spec", dict, where)
        if "error" in r:
            continue
        vals = [_field(r, k, (int, float), where) for k in ("median_ms", "p10_ms", "p90_ms")]
        if not all(math.isfinite(v) and v > 0 for v in vals):
            raise TableError(f"{where}median_ms/p10_ms/p90_ms: must be positive milliseconds, got {vals}")
        out.append({"name": name, "spec": spec, "median_ms": float(vals[0]), "p10_ms": float(vals[1]),
                    "p90_ms": float(vals[2])})
    return out


def _call_overhead(doc: dict, provenance: dict) -> dict:
    """The empty op's time as a local ORT profile records it (``call_overhead_ms`` and its note);
    nothing for results of a bundle without an empty op (``hwcost predict`` then says so)."""
    co = doc.get("call_overhead")
    if co is None:
        provenance["call_overhead"] = "not measured (a bundle without an empty op; make a new bundle)"
        return {}
    if not isinstance(co, dict):
        raise TableError(f"call_overhead: expected an object, got {co!r}")
    if "error" in co:
        provenance["call_overhead"] = f"failed on the device: {co['error']}"
        return {}
    median = _field(co, "median_ms", (int, float), "call_overhead.")
    if not (math.isfinite(median) and median > 0):
        raise TableError(f"call_overhead.median_ms: must be a positive number of milliseconds, got {median!r}")
    return {"call_overhead_ms": round(float(median), 6),
            "call_overhead_note": "the time of an empty op on this backend; included in every entry, "
                                  "since each op runs alone (a network pays it once)",
            "call_overhead_samples": {k: co[k] for k in ("p10_ms", "p90_ms", "n", "quality", "passes",
                                                         "pass_medians_ms") if co.get(k) is not None}}


# ---------------------------------------------------------------- ssh

def check_host(host: str) -> str:
    """``[user@]host`` or ``[user@][ipv6]``; refuses anything ssh could read as an option."""
    if not isinstance(host, str) or not host or host.startswith("-") or not _HOST.fullmatch(host):
        raise HwcostError(f"bad ssh host {host!r}: expected [user@]host (letters, digits, . _ -; an IPv6 "
                          f"address in brackets) with no leading '-' and no whitespace; put other ssh "
                          f"settings in ~/.ssh/config")
    return host


def _check_remote_dir(remote_dir: str) -> str:
    if not _SAFE_REMOTE.fullmatch(remote_dir or "") or remote_dir.startswith("-") or ".." in remote_dir.split("/"):
        raise HwcostError(f"bad remote directory {remote_dir!r}: use letters, digits and . _ + - / only "
                          f"(scp reads other characters differently across OpenSSH versions)")
    return remote_dir.rstrip("/") or "/"


def remote_command(remote_dir: str, python: str, runner_args: Sequence[str]) -> str:
    """The one string ssh hands to the remote shell; every word shell-quoted."""
    run = [python, "runner.py", "bundle.zip", "--out", "results.json", *runner_args]
    return f"cd {shlex.quote(remote_dir)} && " + " ".join(shlex.quote(a) for a in run)


def run_over_ssh(bundle: str | os.PathLike, host: str, out: str | os.PathLike, *, remote_dir: str = "hwcost-run",
                 python: str = "python3", port: int | None = None, runner_args: Sequence[str] = (),
                 resume: bool = True, ssh: str = "ssh", scp: str = "scp") -> Path:
    """Copy the bundle and its runner to ``host``, run it there, fetch the results to ``out``.

    Only argument lists reach subprocess (no local shell); the single command
    string the remote shell sees is built with ``shlex.quote``. Remote files
    have fixed names in ``remote_dir``, so a rerun after a dropped connection
    resumes from the runner's journal (``resume=False`` measures again).
    """
    host = check_host(host)
    remote_dir = _check_remote_dir(remote_dir)
    bundle, out = Path(bundle).resolve(), Path(out).resolve()  # absolute: a ':' cannot make scp see a host
    if not bundle.is_file():
        raise HwcostError(f"bundle {bundle} does not exist")
    if not out.parent.is_dir():
        raise HwcostError(f"cannot write {out}: directory {out.parent} does not exist")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise HwcostError(f"bad ssh port {port!r}")
    ssh_opts = ["-p", str(port)] if port else []
    scp_opts = ["-q", *(["-P", str(port)] if port else [])]
    ssh_host = re.sub(r"\[(.*)\]$", r"\1", host)  # ssh wants a bare IPv6 address, scp a bracketed one
    args = [*runner_args, "--resume" if resume else "--force"]

    def call(argv: list[str], what: str) -> int:
        try:
            return subprocess.run(argv, check=False).returncode
        except OSError as e:
            raise HwcostError(f"cannot {what}: {argv[0]}: {e.strerror or e}") from None

    if call([ssh, *ssh_opts, "--", ssh_host, f"mkdir -p -- {shlex.quote(remote_dir)}"], "reach the host") != 0:
        raise HwcostError(f"ssh {host} failed (creating {remote_dir}); check that `ssh {host}` works")
    with tempfile.TemporaryDirectory() as tmp:
        local_runner = Path(tmp) / "runner.py"
        with zipfile.ZipFile(bundle) as zf:
            try:
                local_runner.write_bytes(zf.read("runner.py"))  # the runner that matches the bundle
            except KeyError:
                raise HwcostError(f"{bundle} has no runner.py; rebuild it with `hwcost bundle`") from None
        for src, dst in ((bundle, "bundle.zip"), (local_runner, "runner.py")):
            if call([scp, *scp_opts, "--", str(src), f"{host}:{remote_dir}/{dst}"], "copy to the host") != 0:
                raise HwcostError(f"scp of {src.name} to {host}:{remote_dir}/ failed")
    rc = call([ssh, *ssh_opts, "--", ssh_host, remote_command(remote_dir, python, args)], "run on the host")
    if rc not in (0, 1):  # 1: some keys failed, still a results file to fetch
        hint = {2: "the runner refused its input (message above)", 130: "it was interrupted; run again to resume",
                255: "ssh failed"}.get(rc, "see the messages above")
        raise HwcostError(f"the runner on {host} exited with status {rc}: {hint}")
    part = out.with_name(out.name + ".part")
    if call([scp, *scp_opts, "--", f"{host}:{remote_dir}/results.json", str(part)], "fetch the results") != 0:
        raise HwcostError(f"fetching {host}:{remote_dir}/results.json failed")
    os.replace(part, out)
    return out


__all__ = ["write_bundle", "import_results", "import_runner_results", "run_over_ssh", "check_host", "remote_command",
           "BundleInfo", "RUNNER_PATH"]
