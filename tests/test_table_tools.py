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


# --- csv <-> import-csv -----------------------------------------------------------------------------

ODD_EXTRAS = {"count": 3, "rel_ci": 0.0123456789012345, "pass_medians_ms": [0.1, 0.2], "meta": {"a": [1, None]},
              "note": "plain text, with a comma", "digits": "3", "flag": True, "none": None, "empty": "",
              "word_null": "null", "nan_text": "NaN"}


def _rich_table() -> DeviceTable:
    keyed = OpKey("darts", "sep_conv_3x3", 1, 16, 16, 32, 32, 1, extra={"c_mid": 32, "z": "max"})
    entries = [Entry(keyed, 0.123456789012345, 0.1, 1 / 3, 17, "noisy", dict(ODD_EXTRAS)),
               Entry(OpKey("darts", "skip_connect", 1, 16, 16, 32, 32, 1), 1e-05, 1e-05, 2e-05, 1, "capped"),
               Entry(OpKey("darts", "max_pool_3x3", 2, 8, 8, 7, 7, 2), 12.5, 12.0, 13.0, 100, "ok", {"count": 2})]
    return DeviceTable(kind="op", spaces=["darts"], device={"name": "Pi 4, \"lab\"", "cpu": "Cortex-A72"},
                       runtime={**ORT_CPU, "graph_optimization": "all"}, entries=tuple(entries),
                       measurement={"call_overhead_ms": 0.004, "passes": 10, "note": "x\ny"},
                       created="2025-01-31T10:00:00+00:00",
                       provenance={"merged_from": [{"table": "a.json", "entries": 2}], "source": "runner"})


def _round_trip(tmp_path, original: DeviceTable, capsys, via_stdout: bool = False) -> DeviceTable:
    save_table(original, tmp_path / "t.json")
    csv_path = tmp_path / "t.csv"
    if via_stdout:
        assert cli("csv", str(tmp_path / "t.json")) == 0
        csv_path.write_text(capsys.readouterr().out)
    else:
        assert cli("csv", str(tmp_path / "t.json"), "--out", str(csv_path)) == 0
    assert cli("import-csv", str(csv_path), "--out", str(tmp_path / "back.json")) == 0
    assert "wrote" in capsys.readouterr().out
    return load_table(tmp_path / "back.json")


@pytest.mark.parametrize("via_stdout", [False, True])
def test_csv_and_import_csv_round_trip(tmp_path, capsys, via_stdout):
    original = _rich_table()
    back = _round_trip(tmp_path, original, capsys, via_stdout)
    assert back == original
    rich = next(e for e in original if e.extra.get("note"))
    assert back.get(rich.key).extra == ODD_EXTRAS   # types too: "3" stays a string, True a bool
    assert (tmp_path / "back.json").read_text() == (tmp_path / "t.json").read_text()


def test_csv_round_trip_of_an_arch_table_and_an_empty_one(tmp_path, capsys):
    from device_tables import ArchKey
    arch = DeviceTable(kind="arch", spaces=["nb201"], device={"name": "raspi4"}, runtime={"backend": "published"},
                       entries=(Entry.imported(ArchKey("nb201", "|none~0|+|skip_connect~0|none~1|+|a~0|b~1|c~2|",
                                                       "cifar10"), 41.25, nb201_index=7),),
                       created="2025-01-31", provenance={"source": "HELP"})
    assert _round_trip(tmp_path, arch, capsys) == arch
    empty = table(0)
    assert _round_trip(tmp_path, empty, capsys) == empty


def test_csv_stays_a_plain_table_for_spreadsheets(tmp_path, capsys):
    import csv
    import io
    save_table(_rich_table(), tmp_path / "t.json")
    assert cli("csv", str(tmp_path / "t.json")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3 and rows[0]["key"].startswith("darts/") and float(rows[2]["median_ms"]) > 0
    assert json.loads(rows[0]["table_header"])["device"]["name"] == 'Pi 4, "lab"'
    assert rows[1]["table_header"] == rows[2]["table_header"] == ""


def test_import_csv_refuses_what_it_cannot_read_back_in_one_line(tmp_path, capsys):
    save_table(_rich_table(), tmp_path / "t.json")
    assert cli("csv", str(tmp_path / "t.json"), "--out", str(tmp_path / "t.csv")) == 0
    capsys.readouterr()
    text = (tmp_path / "t.csv").read_text()
    cases = {
        "edited": (text.replace(",16,16,32,32,1,32,max,", ",16,16,32,32,1,64,max,", 1), "column c_mid is '64'"),
        "no-header": ("\n".join(line.rsplit(",", 1)[0] if i == 0 else line
                                for i, line in enumerate(text.splitlines())) + "\n", "table_header"),
        "bad-median": (text.replace("12.5", "twelve", 1), "median_ms: not a number"),
        "nb201-without-device": ("index,arch,raspi4,pixel3\n0,|none~0|+|a~0|b~1|+|a~0|b~1|c~2|,1.5,2.5\n",
                                 "--device COLUMN; device columns: raspi4, pixel3"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(content)
        assert cli("import-csv", str(path), "--out", str(tmp_path / f"{name}.json")) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hwcost: error:") and match in err[0], (name, err)
        assert not (tmp_path / f"{name}.json").exists()
    assert cli("import-csv", str(tmp_path / "t.csv"), "--device", "raspi4", "--out", str(tmp_path / "x.json")) == 2
    assert "names its own device" in capsys.readouterr().err
