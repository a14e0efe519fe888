"""``hwcost verify RUN``: measure a finished search's network on its table's device and re-derive until
it fits its latency budget -- here (a table profiled on this machine, as ``search --verify``), or on a
remote device through a bundle of whole networks and its runner (a table from ``hwcost table import``):

    hwcost verify RUN                          # remote: writes RUN/verify_round0.zip, says what to run
    python3 verify_round0.zip --out results.json          # on the device
    hwcost verify RUN --results results.json   # records the round; re-derives and writes the next bundle
    hwcost verify RUN --ssh pi@raspberrypi     # or: every round over ssh, to the end
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spaces.errors import HwcostError


def _load_run(out: str):
    from search.run import resume_config, run_settings
    if run_settings(out) is None:
        raise HwcostError(f"{out} is not a search's run directory (no config.json)")
    from search.train import _read_search_result
    cfg = resume_config(out, {})
    result = _read_search_result(out)       # one error for a missing, unreadable or foreign result.json
    result.pop("_path")
    if cfg.table is None:
        raise HwcostError(f"{out} was searched without a device table (--table): nothing to verify against")
    if not Path(cfg.table).is_file():
        raise HwcostError(f"{out} was searched on {cfg.table}, not a table file here (a bundled table was measured "
                          f"elsewhere and takes no calibration): nothing to verify against")
    if cfg.devices:
        raise HwcostError(f"{out} searched for several devices; verify re-derives for one device's table")
    if "latency_ms" not in result.get("derived", {}):
        raise HwcostError(f"{out}: the derived network has no latency (the table prices no latency)")
    return cfg, result


def _summary(r: dict) -> str:
    v = r["verify"]
    last = v["rounds"][-1]
    return (f"measured {last['measured_ms']:.6g} ms after {v['rounds_used']} re-derivation(s) on "
            f"{v['backend']}: {'inside' if v['met'] else 'OUTSIDE'} [floor, budget]"
            + (f" ({v['stopped']})" if v.get("stopped") else ""))


def cmd_verify(args: argparse.Namespace) -> int:
    from device_tables import load_table

    from .verify import (DEFAULT_FINETUNE, DEFAULT_ROUNDS, check_verifiable, predicted_text, share_text,
                         verify_search)
    from .verify_remote import RemoteMeasure, is_remote_table
    for flag, value in (("--rounds", args.rounds), ("--finetune", args.finetune)):
        if value is not None and value < 0:
            raise HwcostError(f"{flag} must be a non-negative number, got {value}")
    cfg, result = _load_run(args.out)
    table = load_table(cfg.table)
    remote = is_remote_table(table)
    done = result.get("verify") or {}
    pending = done.get("pending")
    limits = done.get("limits") or {}
    rounds = args.rounds if args.rounds is not None else limits.get("rounds", DEFAULT_ROUNDS)
    finetune = args.finetune if args.finetune is not None else limits.get("finetune", DEFAULT_FINETUNE)
    if not remote:
        if args.results or args.ssh:
            raise HwcostError(f"{cfg.table} was profiled on a backend of a machine, not through a bundle: "
                              f"--results / --ssh are for a remote device's table")
        check_verifiable(cfg.table)         # another CPU, another backend: one error
    if done and not pending and not args.again:
        print(f"{args.out} was verified already: {_summary(result)}; --again verifies it once more")
        return 0
    if args.results and not pending:
        raise HwcostError(f"no network of {args.out} waits for a device's results")
    if pending and not args.results and not args.ssh:
        print(f"round {pending['round']} waits for the device: run {pending['bundle']} there "
              f"(python3 {Path(pending['bundle']).name} --out results.json), then: "
              f"hwcost verify {args.out} --results results.json")
        return 0
    if args.again:
        result.pop("verify", None)
        pending = None
    log = print
    measure = None
    if remote:
        if table.calibration is None:
            raise HwcostError(f"{cfg.table} has no calibration: make its bundle with calibration networks "
                              f"(hwcost bundle --calibration-networks N) and import it again")
        run_bundle = None
        if args.ssh:
            from profilers.bundle import check_host, run_over_ssh
            check_host(args.ssh)

            def run_bundle(bundle: Path, results: Path) -> None:
                run_over_ssh(bundle, args.ssh, results, remote_dir=args.remote_dir, python=args.python,
                             port=args.port, resume=False)
        measure = RemoteMeasure(args.out, results=args.results, pending=pending, run_bundle=run_bundle, log=log)
        log(f"verify: {cfg.table} was measured on {table.device.get('name')}; its derived networks are measured "
            f"there, through bundles ({rounds} re-derivations at most)")
    else:
        log(f"verify: measuring the derived network on the backend of {cfg.table} ({rounds} re-derivations at most)")
    r = verify_search(cfg, args.out, result, rounds, log=log, finetune=finetune, measure=measure)
    v = r["verify"]
    if v.get("pending"):
        p = v["pending"]
        print(f"round {p['round']}: run {p['bundle']} on {p.get('device') or 'the device'} "
              f"(python3 {Path(p['bundle']).name} --out results.json; needs numpy and onnxruntime), then:\n"
              f"  hwcost verify {args.out} --results results.json")
        return 0
    for rec in v["rounds"]:
        print(f"  round {rec['round']}: predicted {predicted_text(rec)}, measured {rec['measured_ms']:.3f} ms"
              + (f" ({share_text(rec['measured_ms'], rec['budget_ms'], rec.get('floor_ms'))} of "
                 f"{rec['budget_ms']:.3f} ms)" if rec.get("budget_ms")
                 else ""))
    print(f"derived {'arch' if 'arch' in r else 'genotype'}: {r.get('arch', r.get('genotype'))}")
    print(f"  {_summary(r)}")
    return 0


def add_verify_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="measure a search's network on its table's device (here or remote) and "
                                      "re-derive until it fits", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="RUN", help="a search's run directory (its config.json and result.json)")
    p.add_argument("--results", help="a remote device's runner results of the bundle the last call wrote")
    p.add_argument("--rounds", type=int, help="re-derivations at most (default 3, or the run's)")
    p.add_argument("--finetune", type=int, metavar="STEPS",
                   help="alpha fine-tuning steps when a re-derivation returns a measured network (default 10)")
    p.add_argument("--again", action="store_true", help="verify a run that was verified already, from round 0")
    g = p.add_argument_group("a remote device over ssh (each round's bundle copied, run, its results fetched)")
    g.add_argument("--ssh", metavar="USER@HOST")
    g.add_argument("--port", type=int, help="ssh port")
    g.add_argument("--remote-dir", default="hwcost-verify", help="directory on the host (default ~/hwcost-verify)")
    g.add_argument("--python", default="python3", help="python on the host (default python3)")
    p.set_defaults(func=cmd_verify)
    return p
