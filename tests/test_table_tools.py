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


# --- show -------------------------------------------------------------------------------------------

def _with_bad_entry(tmp_path):
    path = tmp_path / "t.json"
    save_table(table(4), path)
    doc = json.loads(path.read_text())
    doc["entries"][1]["median_ms"] = -1.0                     # one bad entry
    doc["entries"].append(dict(doc["entries"][2]))           # and a duplicate
    path.write_text(json.dumps(doc))
    return path, doc["entries"][1]["key"], doc["entries"][2]["key"]


def test_show_marks_a_bad_entry_and_validate_stays_strict(tmp_path, capsys):
    path, bad_key, dup_key = _with_bad_entry(tmp_path)
    assert cli("show", str(path), "--limit", "1") == 0
    out = capsys.readouterr().out
    bad_lines = [line for line in out.splitlines() if line.startswith("! ") and "BAD entries[" in line]
    assert len(bad_lines) == 2                                # both shown, whatever --limit
    line = next(x for x in bad_lines if bad_key in x)
    assert "-1" in line and "BAD entries[1]: median_ms: must be a positive" in line
    assert any(dup_key in x and "duplicate key (also entries[2])" in x for x in bad_lines)
    assert "3 (median" in out and "and 2 BAD" in out and "validate` refuses" in out
    assert key(0).to_str() in out                             # a good entry, within --limit
    assert cli("validate", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwcost: error: table ") and "median_ms" in err[0]


def test_show_of_a_valid_table_has_no_marks_and_a_bad_header_is_one_line(tmp_path, capsys):
    save_table(table(2), tmp_path / "ok.json")
    assert cli("show", str(tmp_path / "ok.json")) == 0
    out = capsys.readouterr().out
    assert "BAD" not in out and "! " not in out and key(1).to_str() in out
    doc = json.loads((tmp_path / "ok.json").read_text())
    doc["runtime"]["threads"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert cli("show", str(tmp_path / "bad.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime.threads" in err[0]
