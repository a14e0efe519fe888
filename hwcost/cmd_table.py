"""``hwcost table ...``: show, validate, merge, export and import device tables.

A thin layer over ``device_tables``. TableError is deliberately not caught
here: the main CLI turns it into one ``hwcost: error: ...`` line. A TABLE
argument is a path or a bundled table name (``raspi4``, ``nb201_raspi4``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from device_tables import (DeviceTable, TableError, bundled_table_path, import_nb201_csv, list_bundled,
                           load_table, merge_tables, save_table, to_csv)

_MAX_CONFLICTS_SHOWN = 20


def _load(name: str, expect_space: str | None = None) -> DeviceTable:
    return load_table(bundled_table_path(name), expect_space=expect_space)


def _fmt_dict(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def _short_provenance(p: dict[str, Any]) -> dict[str, Any]:
    """The provenance with a space node table's record of keyed networks as a count."""
    from costmodels.node_tensor import RECORD
    rec = p.get(RECORD)
    if not isinstance(rec, dict):
        return p
    return {**p, RECORD: f"{len(rec.get('networks') or [])} networks over {len(rec.get('keys') or [])} node keys"}


def _aligned(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def _raw(value: Any) -> str:
    """A bad entry's field as it is in the file."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value) if isinstance(value, (int, str)) else json.dumps(value)


def _calibration_line(table) -> str:
    from costmodels.incontext import model_of
    m = model_of(table)
    if m is None:
        return "none: predictions are the sum of isolated ops (hwcost calibrate TABLE)"
    verify = sum(smp.role == "verify" for smp in m.samples)
    slow = ""
    if m.reference_spread > 1.05:
        slow = f"; host reference kernel varied {m.reference_spread - 1:.0%} across them (a phase not quiet)"
    if m.phase:
        slow += (f"; measured in a phase up to {m.phase:.2f}x slower than the profile's quietest, scaled back "
                 f"(calibrate again on a quieter host)")
    return (f"{len(m.samples)} networks ({verify} from verify rounds) measured {m.created} on "
            f"{m.host.get('cpu', '?')}; leave-one-out {m.mean:+.1%} +- {m.std:.1%}; factors "
            + ", ".join(f"{g} {f:.3g}" for g, f in sorted(m.factors.items())) + slow)


def _host_phases_line(table) -> str | None:
    """The host's reference kernel as timed beside the profile's passes (hwcost profile)."""
    ref = table.measurement.get("host_reference")
    if not isinstance(ref, dict) or not ref.get("median_ms"):
        return None
    ms = ref["median_ms"]
    verdict = ("steady: one quiet phase" if ref.get("quiet") else
               "VARIED: the host's quiet phase did not hold while the keys were measured (profile again, "
               "or compare with another profile)")
    return (f"reference kernel {min(ms):.4g} .. {max(ms):.4g} ms over {len(ms)} timings "
            f"({ref.get('spread', max(ms) / min(ms)) - 1:+.1%}): {verdict}")


def _weight_stream_line(table) -> str | None:
    """The weight-streaming bandwidth measured with the profile (profilers.stream)."""
    from costmodels.incontext import stream_bandwidth, streaming_ms
    rec = table.measurement.get("weight_stream")
    if isinstance(rec, dict) and rec.get("skipped"):
        return f"not measured: {rec['skipped']}"
    stream = streaming_ms(table)
    if stream is None:
        return None
    bw = stream_bandwidth(table)
    heavy = sum(1 for e in table.entries if stream(e.key, e.median_ms) > 0)
    return (f"{bw / 1e6:.3g} GB/s ({rec.get('bytes', 0) / 2**20:.0f} MiB matrix-vector product, "
            f"{rec.get('median_ms', 0):.4g} ms); {heavy} of {len(table)} keys run faster alone than their "
            f"weights stream at it (a network may pay the difference: in-context group 'streamed')")


def cmd_show(args: argparse.Namespace) -> int:
    from device_tables.table import load_table_for_viewing
    table, bad = load_table_for_viewing(bundled_table_path(args.table))
    medians = [e.median_ms for e in table.entries]
    summary = [
        ["table", table.source or args.table],
        ["kind", f"{table.kind}-level, spaces: {', '.join(table.spaces)}"],
        ["device", _fmt_dict(table.device)],
        ["runtime", _fmt_dict(table.runtime)],
        ["measurement", _fmt_dict({k: v for k, v in table.measurement.items()
                                   if k not in ("host_reference", "weight_stream")})],
        ["created", table.created],
        ["provenance", _fmt_dict(_short_provenance(table.provenance))],
        *([["host phases", line]] if (line := _host_phases_line(table)) else []),
        *([["weight stream", line]] if (line := _weight_stream_line(table)) else []),
        ["calibration", _calibration_line(table)],
        ["entries", f"{len(table)}" + (f" (median {min(medians):.4g} .. {max(medians):.4g} ms)" if medians else "")
         + (f", and {len(bad)} BAD (marked !)" if bad else "")],
    ]
    print("\n".join(_aligned(summary, set())))
    shown = [(e.key.to_str(), [f"{e.median_ms:.4g}", f"{e.p10_ms:.4g}", f"{e.p90_ms:.4g}", str(e.n), e.quality])
             for e in table.entries[: args.limit]]
    for b in bad:  # every bad entry, whatever --limit: they are what the user needs to see
        d = b["entry"] if isinstance(b["entry"], dict) else {}
        name = b["key"] or f"entries[{b['index']}]"
        shown.append((f"! {name}",
                      [_raw(d.get(f)) for f in ("median_ms", "p10_ms", "p90_ms", "n")]
                      + [f"BAD entries[{b['index']}]: {b['error']}"]))
    if shown:
        rows = [["key", "median_ms", "p10_ms", "p90_ms", "n", "quality"]]
        rows += [[k, *cells] for k, cells in sorted(shown, key=lambda r: r[0].lstrip("! "))]
        print()
        print("\n".join(_aligned(rows, {1, 2, 3, 4})))
        if len(table) > args.limit:
            print(f"... {len(table) - args.limit} more (--limit N)")
    if bad:
        print(f"\n! {len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'}: `hwcost table validate` refuses this "
              f"table and nothing computes with it until they are fixed or removed")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    table = _load(args.table, expect_space=args.space)
    print(f"ok: {len(table)} entries ({table.kind}-level, spaces {', '.join(table.spaces)}, "
          f"device {table.device['name']}) in {table.source}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    merged, conflicts = merge_tables([_load(t) for t in args.tables], force=args.force)
    save_table(merged, args.out)
    for c in conflicts[:_MAX_CONFLICTS_SHOWN]:
        print(f"conflict: {c}")
    if len(conflicts) > _MAX_CONFLICTS_SHOWN:
        print(f"... and {len(conflicts) - _MAX_CONFLICTS_SHOWN} more conflicts")
    print(f"wrote {args.out}: {len(merged)} entries from {len(args.tables)} tables, {len(conflicts)} conflicts")
    return 0


def cmd_csv(args: argparse.Namespace) -> int:
    table = _load(args.table)
    rows = to_csv(table, args.out if args.out else sys.stdout)
    if args.out:
        print(f"wrote {args.out}: {rows} rows")
    return 0


def _csv_columns(path: str) -> list[str]:
    import csv
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TableError(f"CSV {path}: cannot read it: {e}") from None


def cmd_import_csv(args: argparse.Namespace) -> int:
    from device_tables.table import read_csv_table
    columns = _csv_columns(args.csv)
    if columns[:1] == ["key"]:  # written by `hwcost table csv`: the table back, header and all
        if args.device is not None:
            raise TableError(f"{args.csv} is a table CSV (from `hwcost table csv`), which names its own device; "
                             f"--device picks a column of a NAS-Bench-201 latency CSV")
        table = read_csv_table(args.csv)
        save_table(table, args.out)
        print(f"wrote {args.out}: {len(table)} entries ({table.kind}-level), device {table.device['name']}")
        return 0
    if args.device is None:
        shown = ", ".join(columns[2:]) if columns[:2] == ["index", "arch"] else "none (not an NB201 latency CSV)"
        raise TableError(f"{args.csv} is not a table CSV (from `hwcost table csv`, first column 'key'); as a "
                         f"NAS-Bench-201 latency CSV it needs --device COLUMN; device columns: {shown}")
    table = import_nb201_csv(args.csv, args.device, args.out)
    print(f"wrote {args.out}: {len(table)} architectures, device {args.device}")
    return 0


def add_table_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``table`` and its subcommands on the main CLI's subparsers."""
    bundled = ", ".join(list_bundled()) or "none"
    parser = subparsers.add_parser("table", help="show, validate, merge, export or import device tables",
                                   description=f"Device tables. TABLE is a path or a bundled name ({bundled}).")
    sub = parser.add_subparsers(dest="table_command", metavar="COMMAND", required=True)

    p = sub.add_parser("show", help="header summary and the first entries")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("--limit", type=int, default=20, help="entries to list (default 20)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("validate", help="check a table completely; prints 'ok: N entries'")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("--space", help="also require the table to be measured for this space")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("merge", help="merge tables of one device/runtime (more samples win)")
    p.add_argument("tables", nargs="+", metavar="TABLE")
    p.add_argument("--out", required=True, help="output table (.json, or .json.gz to compress)")
    p.add_argument("--force", action="store_true", help="merge even if devices or runtime settings differ")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("csv", help="export one row per entry as CSV (import-csv reads it back)",
                       description="One row per entry: key, its fields, median_ms, p10_ms, p90_ms, n, quality, "
                                   "extra.* -- and a last column, table_header, holding the table's device, "
                                   "runtime and measurement as JSON in the first row, so that `hwcost table "
                                   "import-csv` gives the same table back.")
    p.add_argument("table", metavar="TABLE")
    p.add_argument("--out", help="CSV file (default: stdout)")
    p.set_defaults(func=cmd_csv)

    p = sub.add_parser("import-csv", help="a CSV back into a table: `table csv` output, or an NB201 latency column",
                       description="Two kinds of CSV. (1) A CSV written by `hwcost table csv` (first column "
                                   "'key'): the same table comes back (the inverse of `table csv`; edit values "
                                   "in a spreadsheet, keep the key and table_header columns). (2) A "
                                   "NAS-Bench-201 latency CSV (index,arch,<device>...): --device COLUMN "
                                   "becomes an arch-level table.")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--device", metavar="COLUMN",
                   help="for an NB201 latency CSV: the device column, e.g. raspi4")
    p.add_argument("--out", required=True, help="output table (.json or .json.gz)")
    p.set_defaults(func=cmd_import_csv)

    from .cmd_bundle import add_table_import_parser  # results.json of a remote runner
    add_table_import_parser(sub)
    return parser
