"""``hwcost bundle`` and ``hwcost table import``: profile a remote board or phone.

    hwcost bundle --space darts --networks cifar10-search,cifar10 --out bundle.zip
    (on the device)  python3 bundle.zip --out results.json
    hwcost table import results.json --out device.json

or, with ``--ssh user@host --results results.json``, the copy, run and fetch in
one command. User errors are HwcostError/TableError, which the main CLI prints
as one line (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from device_tables.errors import HwcostError

DEFAULT_CALIBRATION_NETWORKS = 10


def _ops_filter(keys: list, ops: str | None) -> list:
    if not ops:
        return keys
    wanted = [o.strip() for o in ops.split(",") if o.strip()]
    known = sorted({k.op for k in keys})
    missing = [o for o in wanted if o not in known]
    if missing:
        raise HwcostError(f"--ops: {', '.join(missing)} does not occur in these networks; known: {', '.join(known)}")
    return [k for k in keys if k.op in wanted]


def cmd_bundle(args: argparse.Namespace) -> int:
    from profilers.bundle import run_over_ssh, write_bundle
    from profilers.shapes import space_keys

    if args.results and not args.ssh:
        raise HwcostError("--results is where --ssh puts the device's results; give --ssh user@host too")
    if args.ssh:
        from profilers.bundle import check_host
        check_host(args.ssh)  # before minutes of exporting
    from spaces import get_space

    from .cmd_profile import DEFAULT_NETWORKS
    get_space(args.space)  # an unknown space: one line naming the known ones
    # the default follows the space, as `hwcost profile`'s does
    networks_text = args.networks or DEFAULT_NETWORKS.get(args.space, "")
    networks = [n.strip() for n in networks_text.split(",") if n.strip()]
    if not networks:
        raise HwcostError(f"--networks: give the network configurations of space {args.space!r} whose op "
                          f"shapes to measure")
    keys = _ops_filter(space_keys(args.space, networks, batch=args.batch), args.ops)
    settings = {name: value for name, value in (("threads", args.threads), ("rel_ci", args.rel_ci),
                                                ("max_time_s", args.max_time), ("passes", args.passes))
                if value is not None}

    calibration = []
    n_nets = args.calibration_networks
    if n_nets and args.ops:
        raise HwcostError("--calibration-networks: with --ops the table lacks ops the calibration networks run; "
                          "leave one of them out")
    if n_nets is None and not args.ops:
        n_nets = DEFAULT_CALIBRATION_NETWORKS
    if n_nets:
        from .calibrate import bundle_networks
        calibration = bundle_networks(args.space, networks, n_nets, args.seed, args.calibrate_on, args.batch)

    def progress(i: int, n: int, key) -> None:
        print(f"\rexporting {i + 1}/{n} {key.op:<24}", end="", file=sys.stderr, flush=True)

    info = write_bundle(keys, args.out, opset=args.opset, settings=settings, networks=networks,
                        progress=None if args.quiet else progress, calibration=calibration)
    if not args.quiet:
        print(file=sys.stderr)
    nets = f" + {len(calibration)} calibration networks" if calibration else ""
    print(f"wrote {info.path}: {info.n_keys} op models ({args.space}; {', '.join(networks)}){nets}, "
          f"{info.bytes / 2**20:.2f} MiB")
    if not args.ssh:
        print(f"on the device: python3 {info.path.rsplit('/', 1)[-1]} --out results.json "
              f"(needs numpy and onnxruntime; or `unzip -j {info.path} runner.py` and "
              f"`python3 runner.py BUNDLE --out results.json`)\n"
              f"then here:     hwcost table import results.json --out device.json")
        return 0
    results = args.results or "results.json"
    run_over_ssh(info.path, args.ssh, results, remote_dir=args.remote_dir, python=args.python, port=args.port)
    print(f"fetched {results} from {args.ssh}")
    if args.table:
        table = import_calibrated(results, allow_failed=args.allow_failed)
        from device_tables.table import save_table
        save_table(table, args.table)
        print(f"wrote {args.table}: {len(table)} entries, device {table.device['name']}")
    else:
        print(f"next: hwcost table import {results} --out device.json")
    return 0


def import_calibrated(results: str, allow_failed: bool = False, device_name: str | None = None):
    """A runner's results as a table, with its in-context model when the runner measured
    calibration networks."""
    from profilers.bundle import import_runner_results
    table, rows = import_runner_results(results, allow_failed, device_name)
    if not rows:
        return table
    from .calibrate import fit_remote
    table, model = fit_remote(table, rows)
    s = model.summary()
    print(f"calibrated on {s['networks']} networks measured on the device: leave-one-out MAPE "
          f"{s['loo_mape']:.1%} (mean {s['loo_mean']:+.1%}, sd {s['loo_std']:.1%})")
    return table


def cmd_table_import(args: argparse.Namespace) -> int:
    from device_tables.table import save_table

    table = import_calibrated(args.results, allow_failed=args.allow_failed, device_name=args.device_name)
    save_table(table, args.out)
    qualities = {q: sum(e.quality == q for e in table) for q in sorted({e.quality for e in table})}
    failed = len(table.provenance.get("failed", []))
    print(f"wrote {args.out}: {len(table)} entries ({', '.join(f'{n} {q}' for q, n in qualities.items())}"
          f"{f', {failed} failed keys left out' if failed else ''}), device {table.device['name']}, "
          f"{table.runtime['execution_provider']} x{table.runtime['threads']} thread(s)")
    return 0


def add_bundle_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hwcost bundle`` on the main CLI's subparsers."""
    p = subparsers.add_parser("bundle", help="ONNX op models + runner for profiling a remote device",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="darts", help="darts | sharpdarts | nb201 (default darts)")
    p.add_argument("--networks",
                   help="network configurations whose op shapes to measure, comma-separated: cifar10-search, "
                        "cifar10, imagenet (darts, sharpdarts) or nb201 (default: cifar10-search,cifar10; "
                        "nb201 for nb201)")
    p.add_argument("--ops", help="only these ops, comma-separated (default all, fixed parts included)")
    p.add_argument("--calibration-networks", type=int, metavar="N",
                   help="random networks of the space the device also measures whole, so that `table import` "
                        f"fits the table's in-context model (default {DEFAULT_CALIBRATION_NETWORKS}, none with "
                        "--ops; 0 for none)")
    p.add_argument("--calibrate-on", metavar="NETWORK",
                   help="network configuration of the calibration networks (default: cifar10 when bundled, "
                        "else the last of --networks that is not a search proxy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration networks (default 0)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--out", required=True, help="bundle .zip to write")
    g = p.add_argument_group("runner defaults (the device's command line overrides them)")
    g.add_argument("--threads", type=int, help="intra-op threads (default 1)")
    g.add_argument("--rel-ci", type=float, help="target relative 95%% CI half-width of the median (default 0.02)")
    g.add_argument("--max-time", type=float, help="per-key time cap in seconds (default 2)")
    g.add_argument("--passes", type=int, help="interleaved passes over all keys, each key keeping its "
                                              "quietest (default 10)")
    g = p.add_argument_group("run it over ssh")
    g.add_argument("--ssh", metavar="USER@HOST", help="copy the bundle there with scp, run it, fetch the results")
    g.add_argument("--results", help="where to put the fetched results (default results.json)")
    g.add_argument("--table", help="also import the results into this device table")
    g.add_argument("--allow-failed", action="store_true", help="with --table: leave out keys the device failed")
    g.add_argument("--port", type=int, help="ssh port")
    g.add_argument("--remote-dir", default="hwcost-run", help="directory on the host (default ~/hwcost-run)")
    g.add_argument("--python", default="python3", help="python on the host (default python3)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bundle)
    return p


def add_table_import_parser(table_subparsers: Any) -> argparse.ArgumentParser:
    """Register ``hwcost table import`` on the ``table`` command's subparsers."""
    p = table_subparsers.add_parser("import", help="import a remote runner's results.json as an op-level table")
    p.add_argument("results", metavar="RESULTS", help="results.json written by the bundle's runner")
    p.add_argument("--out", required=True, help="output table (.json, or .json.gz to compress)")
    p.add_argument("--device-name", help="device name to record (default: what the runner detected)")
    p.add_argument("--allow-failed", action="store_true", help="import even if some keys failed on the device")
    p.set_defaults(func=cmd_table_import)
    return p
