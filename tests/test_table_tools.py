"""`hwcost table` tools on tables from different places (issue 14): merge of a local profile and a
runner import, show of a table with a bad entry, csv -> import-csv round trip. Small synthetic
tables, no measurement."""
from __future__ import annotations

import json

import pytest

from device_tables import DeviceTable, Entry, OpKey, load_table, save_table
from device_tables.errors import TableError

ORT_CPU = {"backend": "ort-cpu", "backend_version": "1.20.0", "execution_provider": "CPUExecutionProvider",
           "threads": 1, "dtype": "float32", "batch": 1}


def key(i: int) -> OpKey:
    return OpKey("nb201", "nor_conv_3x3", 1, 16, 16, 32 >> (i % 3), 32 >> (i % 3), 1 + i // 3)


def table(n: int = 3, first: int = 0, runtime: dict | None = None, samples: int = 10, **kw) -> DeviceTable:
    entries = [Entry(key(i), 0.1 + i, 0.09 + i, 0.12 + i, samples) for i in range(first, first + n)]
    fields = dict(kind="op", spaces=["nb201"], device={"name": "box", "cpu": "box"},
                  runtime=dict(runtime or ORT_CPU), entries=tuple(entries),
                  measurement={"call_overhead_ms": 0.004, "isolation": "one ONNX Runtime session per op model"},
                  created="2025-01-31T10:00:00+00:00", provenance={"tool": "hwcost profile"})
    fields.update(kw)
    return DeviceTable(**fields)


def cli(*argv: str) -> int:
    from hwcost import cli as main
    return main.main(["table", *argv])


# --- merge ------------------------------------------------------------------------------------------

def test_merge_takes_an_older_runner_table_onnxruntime_for_ort_cpu(tmp_path, capsys):
    local = table(3)
    older = table(3, first=2, runtime={**ORT_CPU, "backend": "onnxruntime", "backend_version": "1.16.0"},
                  samples=20, provenance={"source": "runner"})
    save_table(local, tmp_path / "local.json")
    save_table(older, tmp_path / "runner.json")
    assert cli("merge", str(tmp_path / "local.json"), str(tmp_path / "runner.json"),
               "--out", str(tmp_path / "m.json")) == 0
    merged = load_table(tmp_path / "m.json")
    assert merged.runtime["backend"] == "ort-cpu" and len(merged) == 5
    assert "1 conflicts" in capsys.readouterr().out
    # the older table first: the merged table still has the one name
    assert cli("merge", str(tmp_path / "runner.json"), str(tmp_path / "local.json"),
               "--out", str(tmp_path / "m2.json")) == 0
    assert load_table(tmp_path / "m2.json").runtime["backend"] == "ort-cpu"
    # another execution provider is another runtime: still refused, one line, exit 2
    xnn = table(2, runtime={**ORT_CPU, "backend": "onnxruntime", "execution_provider": "XnnpackExecutionProvider"})
    save_table(xnn, tmp_path / "xnn.json")
    assert cli("merge", str(tmp_path / "local.json"), str(tmp_path / "xnn.json"), "--out", str(tmp_path / "x.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ort:XnnpackExecutionProvider" in err[0] and not (tmp_path / "x.json").exists()
