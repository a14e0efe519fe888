"""Rebuild the bundled NAS-Bench-201 tables in ``device_tables/data/`` from the published CSV.

    python -m device_tables.build_bundled /work/shared/data/nb201-device-latency/latency_ms.csv

Writes ``nb201_<device>.json.gz`` per device (gzip: the same JSON, ~17x
smaller), copies ``LICENSE-HELP`` and writes ``README.md``. The output is
deterministic (the ``created`` date is the CSV's modification date, gzip
carries no time stamp), so rebuilding from the same CSV changes no byte.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import DATA_DIR
from ._io import atomic_write
from .nb201_csv import (DESCRIPTIONS, HELP_SOURCE, HWNAS_COLUMNS, HWNAS_SOURCE, WHOLE_MS_COLUMNS,
                        import_nb201_csv, split_column)

DEFAULT_DEVICES = ("raspi4", "pixel3", "pixel2", "gold_6226", "titan_rtx_1", "eyeriss", "fpga")

README = """\
# Bundled device tables

Architecture-level tables (`kind: "arch"`, space `nb201`): one latency per
NAS-Bench-201 architecture (all 15,625), keyed `arch:nb201/cifar10/<arch string>`.
Each file is the ordinary table JSON, gzip-compressed (read with
`device_tables.load_table` or `load_bundled("raspi4")`, or `zcat`).

| file | device | original source |
|------|--------|-----------------|
{rows}

## Provenance

- Source: the {help}; its NAS-Bench-201 latency files, converted to one CSV
  (`latency_ms.csv`: `index`, `arch`, one column per device) and from there to
  these tables **without changing any value** (6 significant digits as
  published). Licence: MIT, see `LICENSE-HELP` in this folder.
- The raspi4, pixel3, eyeriss and fpga columns come originally from
  {hwnas} (MIT licence).
- Units: milliseconds. Each entry has `median_ms` = the published value; there
  is no spread, so `p10_ms` = `p90_ms` = `median_ms`, `n` = 1 and
  `quality` = `"imported"`. `extra.nb201_index` is the architecture's
  NAS-Bench-201 index (the CSV's `index` column).
- Columns {whole} are published in whole milliseconds
  (`measurement.resolution_ms` = 1 in those tables).
- GPU columns end in the batch size (`titan_rtx_1`: batch 1), recorded as
  `runtime.batch`; the runtime/backend used by the original authors is not
  recorded in the source, so `runtime.backend` is `"unknown"`.
- Known property: the phone and Pi columns are noisy; judge predictors on them
  by rank correlation (Spearman) rather than by ±10% accuracy alone.

Rebuild (deterministic) with
`python -m device_tables.build_bundled <path>/latency_ms.csv`.

Op-level tables measured by `hwcost profile` are added here as
`<space>_<backend>.json`.
"""


def build(csv_path: str | Path, out_dir: Path = DATA_DIR, devices: tuple[str, ...] = DEFAULT_DEVICES) -> list[Path]:
    """Write the tables, the licence and the README; returns the table paths."""
    csv_path = Path(csv_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.fromtimestamp(csv_path.stat().st_mtime, timezone.utc).date().isoformat()
    written = []
    for device in devices:
        path = out_dir / f"nb201_{device}.json.gz"
        import_nb201_csv(csv_path, device, path, created=created)
        written.append(path)
    shutil.copyfile(csv_path.parent / "LICENSE-HELP", out_dir / "LICENSE-HELP")
    rows = "\n".join(
        f"| `nb201_{d}.json.gz` | `{d}`: {DESCRIPTIONS[split_column(d)[0]]} "
        f"| {'HW-NAS-Bench via HELP' if d in HWNAS_COLUMNS else 'HELP'} |" for d in devices)
    text = README.format(rows=rows, help=HELP_SOURCE, hwnas=HWNAS_SOURCE,
                         whole=", ".join(f"`{c}`" for c in sorted(WHOLE_MS_COLUMNS)))
    atomic_write(out_dir / "README.md", text.encode("utf-8"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_tables.build_bundled", description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="the NB201 latency CSV (latency_ms.csv, LICENSE-HELP next to it)")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--devices", nargs="+", default=list(DEFAULT_DEVICES))
    args = parser.parse_args(argv)
    for path in build(args.csv, args.out_dir, tuple(args.devices)):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
