"""Import published NAS-Bench-201 latencies (one value per architecture) as an arch-level table.

The CSV (``index,arch,<device>...``, milliseconds) is the HELP repository's
NB201 latency data converted without changing any value; see the README next
to it. The values keep their published precision; there is no spread, so each
entry is ``Entry.imported`` (p10 = median = p90, n = 1).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .errors import TableError
from .keys import ArchKey
from .table import DeviceTable, Entry, save_table

HELP_SOURCE = "HELP repository (github.com/HayeonLee/HELP), data/nasbench201/latency/ and str_arch2idx.pt"
HWNAS_SOURCE = "HW-NAS-Bench (github.com/GATECH-EIC/HW-NAS-Bench)"
HWNAS_COLUMNS = {"raspi4", "pixel3", "eyeriss", "fpga"}  # originally from HW-NAS-Bench
WHOLE_MS_COLUMNS = {"pixel2", "samsung_a50", "samsung_s7", "essential_ph_1"}
DESCRIPTIONS = {
    "raspi4": "Raspberry Pi 4", "pixel3": "Google Pixel 3", "pixel2": "Google Pixel 2",
    "samsung_a50": "Samsung Galaxy A50", "samsung_s7": "Samsung Galaxy S7",
    "essential_ph_1": "Essential Phone PH-1", "eyeriss": "Eyeriss (ASIC)", "fpga": "FPGA",
    "gold_6226": "Intel Xeon Gold 6226", "gold_6240": "Intel Xeon Gold 6240",
    "silver_4114": "Intel Xeon Silver 4114", "silver_4210r": "Intel Xeon Silver 4210R",
    "titan_rtx": "NVIDIA Titan RTX", "titanx": "NVIDIA Titan X", "titanxp": "NVIDIA Titan Xp",
    "1080ti": "NVIDIA GeForce GTX 1080 Ti", "2080ti": "NVIDIA GeForce RTX 2080 Ti",
}
_GPU_COLUMN = re.compile(r"(titan_rtx|titanxp|titanx|1080ti|2080ti)_([0-9]+)")


def split_column(column: str) -> tuple[str, int | None]:
    """``titan_rtx_32`` -> (``titan_rtx``, 32): GPU columns end in their batch size."""
    gpu = _GPU_COLUMN.fullmatch(column)
    return (gpu.group(1), int(gpu.group(2))) if gpu else (column, None)


def device_columns(csv_path: str | Path) -> list[str]:
    """The device columns of an NB201 latency CSV (everything after ``index,arch``)."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as e:
        raise TableError(f"NB201 CSV {path}: cannot read it: {e}") from None
    if not header or header[:2] != ["index", "arch"] or len(header) < 3:
        raise TableError(f"NB201 CSV {path}: expected a header 'index,arch,<device>...', got {header!r}")
    return header[2:]


def import_nb201_csv(csv_path: str | Path, device_column: str, out_path: str | Path | None = None,
                     *, created: str | None = None) -> DeviceTable:
    """Build (and optionally save) the arch-level table of one device column."""
    path = Path(csv_path)
    devices = device_columns(path)
    if device_column not in devices:
        raise TableError(f"NB201 CSV {path} has no device column {device_column!r}; "
                         f"columns: {', '.join(devices)}")
    col = 2 + devices.index(device_column)
    entries, seen = [], {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        width = len(next(reader))
        for row in reader:
            if len(row) != width:
                raise TableError(f"NB201 CSV {path} line {reader.line_num}: {len(row)} fields, the header has "
                                 f"{width} (missing or extra columns)")
            if row[1] in seen:
                raise TableError(f"NB201 CSV {path} line {reader.line_num}: duplicate architecture {row[1]!r} "
                                 f"(first on line {seen[row[1]]})")
            seen[row[1]] = reader.line_num
            try:
                key = ArchKey(space="nb201", arch=row[1], network="cifar10")
                entries.append(Entry.imported(key, float(row[col]), nb201_index=int(row[0])))
            except (ValueError, IndexError) as e:  # TableError is a ValueError
                raise TableError(f"NB201 CSV {path} line {reader.line_num}: {e}") from None
    name, batch = split_column(device_column)
    measurement = {"statistic": "one published value per architecture; no spread or sample count"}
    if device_column in WHOLE_MS_COLUMNS:
        measurement["resolution_ms"] = 1
    provenance = {"source": HELP_SOURCE, "licence": "MIT (see LICENSE-HELP)", "csv": path.name,
                  "column": device_column, "conversion": "converted without changing values; unit ms"}
    if device_column in HWNAS_COLUMNS:
        provenance["original_source"] = HWNAS_SOURCE + ", MIT"
    extra = {"created": created} if created else {}
    table = DeviceTable(kind="arch", spaces=["nb201"],
                        device={"name": name, "description": DESCRIPTIONS.get(name, name)},
                        runtime={"backend": "unknown", **({"batch": batch} if batch else {})}, entries=tuple(entries),
                        measurement=measurement, provenance=provenance, **extra)
    if out_path is not None:
        save_table(table, out_path)
    return table
