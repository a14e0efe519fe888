"""device_tables: keys, table validation, journal crash-safety, NB201 import, bundled data, CLI."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from device_tables import (SCHEMA_VERSION, ArchKey, DeviceTable, Entry, Journal, OpKey, TableError,
                           bundled_table_path, import_nb201_csv, list_bundled, load_bundled, load_table,
                           merge_tables, parse_key, save_table, to_csv)
from device_tables.errors import KeyFormatError, MissingKeyError
from device_tables.nb201_csv import device_columns

REPO = Path(__file__).resolve().parents[1]
NB201_CSV = REPO.parent / "shared" / "data" / "nb201-device-latency" / "latency_ms.csv"
needs_csv = pytest.mark.skipif(not NB201_CSV.is_file(), reason="shared NB201 latency CSV not present")
# 15 rows of that CSV, byte for byte, in every clone (tests/data/README.md)
NB201_SAMPLE = Path(__file__).with_name("data") / "nb201_latency_ms_sample.csv"
NB201_CSVS = [pytest.param(NB201_SAMPLE, id="sample"), pytest.param(NB201_CSV, id="full", marks=needs_csv)]
BUNDLED_DEVICES = ["raspi4", "pixel3", "pixel2", "gold_6226", "titan_rtx_1", "eyeriss", "fpga"]


def op_key(i: int = 0, space: str = "darts") -> OpKey:
    return OpKey(space, "sep_conv_3x3", 1, 16, 16, 32, 32, 1, extra={"c_mid": 32 + i})


def make_table(n: int = 3, threads: int = 1, space: str = "darts", samples: int = 10) -> DeviceTable:
    entries = [Entry(op_key(i, space), 1.0 + i, 0.9 + i, 1.2 + i, samples) for i in range(n)]
    return DeviceTable(kind="op", spaces=[space], device={"name": "box", "cores": 4},
                       runtime={"backend": "onnxruntime", "threads": threads, "dtype": "float32", "batch": 1},
                       entries=tuple(entries), measurement={"warmup": 5}, created="2025-01-31",
                       provenance={"source": "test"})


# --- keys -------------------------------------------------------------------------------------------

def test_op_key_canonical_string_round_trips():
    key = OpKey("darts", "sep_conv_3x3", 1, 16, 16, 32, 32, 1, extra=(("c_mid", 32),))
    assert key.to_str() == "darts/sep_conv_3x3|b1|cin16|cout16|h32|w32|s1|c_mid=32"
    assert OpKey.from_str(key.to_str()) == key
    odd = OpKey("sharpdarts", "mixed", 2, 3, 4, 5, 6, 2, extra={"z": "max", "a": -1, "m": 0.25, "e": 1e-05})
    assert [n for n, _ in odd.extra] == ["a", "e", "m", "z"]  # sorted by name
    assert parse_key(odd.to_str()) == odd
    assert OpKey.from_dict(odd.as_dict()) == odd
    assert len({key, OpKey.from_str(key.to_str())}) == 1  # hashable, equal


def test_arch_key_round_trips_and_parse_key_dispatches():
    key = ArchKey("nb201", "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|a~0|b~1|c~2|", "cifar10")
    assert key.to_str().startswith("arch:nb201/cifar10/|")
    assert parse_key(key.to_str()) == key
    assert ArchKey.from_dict(key.as_dict()) == key


@pytest.mark.parametrize("build", [
    lambda: OpKey("", "op", 1, 1, 1, 1, 1, 1),
    lambda: OpKey("da|rts", "op", 1, 1, 1, 1, 1, 1),
    lambda: OpKey("darts", "op", 0, 1, 1, 1, 1, 1),
    lambda: OpKey("darts", "op", True, 1, 1, 1, 1, 1),
    lambda: OpKey("darts", "op", 1, 1, 1, 1, 1, 1, extra={"mode": "32"}),  # would read back as an int
    lambda: OpKey("darts", "op", 1, 1, 1, 1, 1, 1, extra={"x": float("nan")}),
    lambda: OpKey.from_str("darts/op|b01|cin1|cout1|h1|w1|s1"),  # not canonical
    lambda: OpKey.from_str("darts/op|b1|cin1"),
    lambda: ArchKey.from_str("arch:nb201"),
])
def test_bad_keys_are_rejected(build):
    with pytest.raises(KeyFormatError):
        build()


# --- tables: round trip, lookup ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["t.json", "t.json.gz"])
def test_table_round_trip_is_exact_and_deterministic(tmp_path, name):
    table = make_table()
    save_table(table, tmp_path / name)
    first = (tmp_path / name).read_bytes()
    loaded = load_table(tmp_path / name, expect_space="darts", expect_kind="op")
    assert loaded == table
    save_table(loaded, tmp_path / name)
    assert (tmp_path / name).read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_lookup_by_key_object_or_string():
    table = make_table()
    key = op_key(1)
    assert table.get(key) is table.get(key.to_str())
    assert table.latency_ms(key) == 2.0
    assert key in table and key.to_str() in table and "garbage" not in table
    assert len(table) == 3 and set(table.keys()) == {op_key(i) for i in range(3)}
    assert table.get(op_key(7)) is None
    with pytest.raises(MissingKeyError, match="no entry for darts/sep_conv_3x3"):
        table.latency_ms(op_key(7))


def test_failed_save_leaves_the_old_file(tmp_path):
    path = tmp_path / "t.json"
    save_table(make_table(), path)
    before = path.read_bytes()
    bad = make_table()
    object.__setattr__(bad.entries[0], "extra", {"x": object()})
    with pytest.raises(TableError, match="extra is not plain JSON"):
        save_table(bad, path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


# --- tables: every malformed file gives one TableError naming the file and the problem --------------

def _doc() -> dict:
    return json.loads(make_table().to_json_text())


def _set(path: str, value):
    def mutate(doc):
        *parents, last = path.split(".")
        target = doc
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
        return doc
    return mutate


_DELETE = object()
_E0 = "entries.0"
MALFORMED = {
    "bad json": ('{"schema": "hwcost.device_table",\n "kind": ', "not valid JSON: Expecting value at line 2"),
    "nan literal": (lambda d: json.dumps(d).replace('"median_ms": 1.0', '"median_ms": NaN'), "NaN is not a number"),
    "infinity": (lambda d: json.dumps(d).replace('"median_ms": 1.0', '"median_ms": 1e999'), "median_ms"),
    "not an object": ([1, 2], "not a device table"),
    "no schema tag": (_set("schema", _DELETE), "not a device table"),
    "other schema": (_set("schema", "something.else"), "not a device table"),
    "future version": (_set("schema_version", 2), "schema_version 2 is not supported; this hwcost reads version(s) 1"),
    "missing device": (_set("device", _DELETE), "missing field device"),
    "unknown field": (_set("colour", "red"), "unknown field colour"),
    "spaces not list": (_set("spaces", "darts"), "spaces: must be a non-empty list"),
    "device no name": (_set("device.name", _DELETE), "device.name"),
    "threads str": (_set("runtime.threads", "4"), "runtime.threads"),
    "bad created": (_set("created", "yesterday"), "created: must be an ISO date"),
    "entries not list": (_set("entries", {}), "entries: must be a list"),
    "negative": (_set(f"{_E0}.median_ms", -1.0), "entries[0] (darts/sep_conv_3x3|b1|cin16|cout16|h32|w32|s1|c_mid=32): median_ms"),
    "zero": (_set(f"{_E0}.p10_ms", 0), "p10_ms: must be a positive finite number"),
    "string latency": (_set(f"{_E0}.p90_ms", "2"), "p90_ms: must be a positive finite number"),
    "p10 above median": (_set(f"{_E0}.p10_ms", 1.1), "p10_ms <= median_ms <= p90_ms"),
    "median above p90": (_set(f"{_E0}.p90_ms", 0.95), "p10_ms <= median_ms <= p90_ms"),
    "n zero": (_set(f"{_E0}.n", 0), "n: must be an integer >= 1"),
    "n float": (_set(f"{_E0}.n", 2.5), "n: must be an integer >= 1"),
    "bad quality": (_set(f"{_E0}.quality", "great"), "quality: must be one of"),
    "missing n": (_set(f"{_E0}.n", _DELETE), "missing field n"),
    "typo field": (_set(f"{_E0}.median", 1.0), "unknown field median"),
    "bad key": (_set(f"{_E0}.key", "darts/x|b1"), "entries[0] (darts/x|b1): key: bad op key"),
    "key vs fields": (_set(f"{_E0}.key_fields.c_in", 8), "key_fields describe 'darts/sep_conv_3x3|b1|cin8"),
    "bad key field": (_set(f"{_E0}.key_fields.h", -3), "key_fields: h must be a positive integer"),
    "arch key in op table": (lambda d: _set(f"{_E0}.key", "arch:darts/cifar10/x")(_set(
        f"{_E0}.key_fields", {"space": "darts", "arch": "x", "network": "cifar10"})(d)), "ArchKey"),
    "duplicate": (lambda d: {**d, "entries": d["entries"] + [d["entries"][1]]}, "entries[3]: duplicate key"),
    "space not listed": (_set("spaces", ["nb201"]), "is for space 'darts', which is not in spaces"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_table_is_one_clear_error(tmp_path, case):
    content, expected = MALFORMED[case]
    path = tmp_path / "bad.json"
    text = content if isinstance(content, str) else json.dumps(content) if isinstance(content, list) else None
    if text is None:
        result = content(_doc())
        text = result if isinstance(result, str) else json.dumps(result)
    path.write_text(text)
    with pytest.raises(TableError) as info:
        load_table(path)
    message = str(info.value)
    assert message.startswith(f"table {path}: ") and expected in message, message
    assert "\n" not in message


def test_unreadable_file_and_wrong_space_or_kind(tmp_path):
    with pytest.raises(TableError, match=r"table .*missing\.json: cannot read the file"):
        load_table(tmp_path / "missing.json")
    (tmp_path / "gz.json.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(TableError, match="corrupt gzip data"):
        load_table(tmp_path / "gz.json.gz")
    save_table(make_table(space="nb201"), tmp_path / "t.json")
    with pytest.raises(TableError, match=r"t\.json was measured for space nb201, but a darts table is needed"):
        load_table(tmp_path / "t.json", expect_space="darts")
    with pytest.raises(TableError, match="holds op-level entries, but an arch-level table is needed"):
        load_table(tmp_path / "t.json", expect_kind="arch")


# --- merge and CSV ----------------------------------------------------------------------------------

def test_merge_keeps_the_entry_with_more_samples():
    a = make_table(n=3, samples=10)
    b_entries = [Entry(op_key(i), 5.0, 4.0, 6.0, 30) for i in (2, 3)]
    b = DeviceTable(**{**{f: getattr(a, f) for f in ("kind", "spaces", "device", "runtime", "created")},
                       "entries": tuple(b_entries)})
    merged, conflicts = merge_tables([a, b])
    assert len(merged) == 4 and merged.latency_ms(op_key(2)) == 5.0 and merged.latency_ms(op_key(0)) == 1.0
    assert [(c.key, c.kept_n, c.dropped_n) for c in conflicts] == [(op_key(2).to_str(), 30, 10)]
    assert "kept table #2 (n=30) over table #1 (n=10)" in str(conflicts[0])
    merged_again, conflicts = merge_tables([b, a])
    assert merged_again.latency_ms(op_key(2)) == 5.0 and len(conflicts) == 1


def test_merge_keeps_a_measured_weight_stream_probe_of_the_largest_matrix():
    import dataclasses
    a = make_table(n=2)
    skipped = {"skipped": "too little free memory"}
    small = {"gbps": 20.0, "bytes": 256 << 20, "median_ms": 13.4}
    large = {"gbps": 14.4, "bytes": 1 << 30, "median_ms": 74.6}
    with_probe = lambda t, p: dataclasses.replace(t, measurement={**t.measurement, "weight_stream": p})  # noqa: E731
    # the first table has none, or only a skipped one: a later table's measured probe is kept
    assert merge_tables([a, with_probe(a, small)])[0].measurement["weight_stream"] == small
    assert merge_tables([with_probe(a, skipped), with_probe(a, small)])[0].measurement["weight_stream"] == small
    # of two measured probes, the larger matrix's, in either order; a skipped one only when nothing was measured
    for order in ((small, large), (large, small)):
        assert merge_tables([with_probe(a, p) for p in order])[0].measurement["weight_stream"] == large
    assert merge_tables([with_probe(a, skipped), a])[0].measurement["weight_stream"] == skipped
    assert "weight_stream" not in merge_tables([a, a])[0].measurement


def test_merge_refuses_other_runtime_unless_forced():
    a, b = make_table(threads=1), make_table(n=5, threads=4)
    with pytest.raises(TableError, match=r"runtime\.threads \(1 vs 4\); pass force=True"):
        merge_tables([a, b])
    merged, conflicts = merge_tables([a, b], force=True)
    assert len(merged) == 5 and len(conflicts) == 3 and len(merged.provenance["merged_from"]) == 2
    arch = DeviceTable(kind="arch", spaces=["nb201"], device=a.device, runtime=a.runtime)
    with pytest.raises(TableError, match="differ in kind"):
        merge_tables([a, arch], force=True)


def test_to_csv_has_key_fields_as_columns(tmp_path):
    table = make_table()
    out = io.StringIO()
    assert to_csv(table, out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[1]["key"] == op_key(1).to_str() and rows[1]["c_mid"] == "33" and rows[1]["c_in"] == "16"
    assert float(rows[1]["median_ms"]) == 2.0 and rows[1]["quality"] == "ok"
    to_csv(table, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == out.getvalue()


# --- journal ----------------------------------------------------------------------------------------

def test_journal_resumes_after_a_torn_last_line(tmp_path):
    path, header = tmp_path / "t.journal", make_table(0).header()
    with Journal(path, header) as j:
        for i in range(5):
            assert j.append(Entry(op_key(i), 1.0, 1.0, 1.0, 3))
        assert not j.append(Entry(op_key(0), 9.0, 9.0, 9.0, 3))  # already done: not repeated
    line = json.dumps(Entry(op_key(5), 1.0, 1.0, 1.0, 3).to_json())
    with open(path, "a") as f:
        f.write(line[: len(line) // 2])  # SIGKILL mid-write
    with pytest.raises(TableError, match="already exists"):
        Journal(path, header)
    j = Journal.open_or_resume(path, header)
    assert j.done_keys() == {op_key(i) for i in range(5)} and op_key(5) not in j
    j.append(Entry(op_key(5), 2.0, 2.0, 2.0, 3))
    table = j.finalize(tmp_path / "t.json")
    assert not path.exists()
    assert load_table(tmp_path / "t.json") == table and table.keys() == [op_key(i) for i in range(6)]
    assert table.latency_ms(op_key(0)) == 1.0 and table.latency_ms(op_key(5)) == 2.0


def test_journal_keeps_a_complete_line_missing_its_newline_and_duplicates_once(tmp_path):
    path, header = tmp_path / "t.journal", make_table(0).header()
    Journal(path, header).close()
    rows = [json.dumps(Entry(op_key(i), 1.0 + i, 1.0 + i, 1.0 + i, 2).to_json()) for i in (0, 1, 0, 2)]
    with open(path, "a") as f:
        f.write("\n".join(rows))  # the last row lacks its newline
    j = Journal.open_or_resume(path, header)
    assert [e.key for e in j.entries()] == [op_key(0), op_key(1), op_key(2)]
    j.append(Entry(op_key(3), 1.0, 1.0, 1.0, 2))
    j.close()
    assert len(Journal.open_or_resume(path, header)) == 4


def test_journal_refuses_another_run_and_corrupt_lines(tmp_path):
    path = tmp_path / "t.journal"
    Journal(path, make_table(0).header()).close()
    with pytest.raises(TableError, match=r"started with runtime\.threads=1 \(this run: 4\); use another output path"):
        Journal.open_or_resume(path, make_table(0, threads=4).header())
    with open(path, "a") as f:
        f.write("{oops}\n" + json.dumps(Entry(op_key(), 1.0, 1.0, 1.0, 2).to_json()) + "\n")
    with pytest.raises(TableError, match="line 2 is corrupt"):
        Journal.open_or_resume(path, make_table(0).header())
    torn_header = tmp_path / "u.journal"
    torn_header.write_text('{"schema": "hwcost.dev')
    assert len(Journal.open_or_resume(torn_header, make_table(0).header())) == 0


_CHILD = """
import sys, time
from device_tables import Entry, Journal, OpKey
header = {"kind": "op", "spaces": ["darts"], "device": {"name": "box"},
          "runtime": {"backend": "onnxruntime", "threads": 1}}
j = Journal.open_or_resume(sys.argv[1], header)
for i in range(200):
    key = OpKey("darts", "conv", 1, 16, 16, 8, 8, 1, extra={"i": i})
    if key in j:
        continue
    # "measuring"; slower past the 50 rows the parent waits for, so that its kill lands mid-run even
    # when it is descheduled for seconds (a busy CI machine)
    time.sleep(0.002 if i < 50 or len(sys.argv) > 2 else 0.05)
    j.append(Entry(key, 1.0 + i, 1.0 + i, 1.0 + i, 5))
    print(key.to_str(), flush=True)  # reported only once durable
if len(sys.argv) > 2:
    j.finalize(sys.argv[2])
"""


def test_sigkilled_profile_resumes_without_losing_or_repeating_rows(tmp_path):
    journal, out = tmp_path / "p.journal", tmp_path / "p.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(journal)], stdout=subprocess.PIPE,
                             text=True, env=env)
    first = [child.stdout.readline().strip() for _ in range(50)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    first += child.stdout.read().split()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL and 50 <= len(first) < 200
    second = subprocess.run([sys.executable, "-c", _CHILD, str(journal), str(out)], capture_output=True,
                            text=True, env=env, check=True).stdout.split()
    assert not set(first) & set(second)  # nothing measured twice
    table = load_table(out)
    keys = [k.to_str() for k in table.keys()]
    assert len(keys) == len(set(keys)) == 200 and set(first) | set(second) == set(keys)
    assert not journal.exists()


# --- NAS-Bench-201 import and the bundled tables ----------------------------------------------------

def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize("csv_path", NB201_CSVS)
def test_nb201_import_matches_the_csv(csv_path, tmp_path):
    header, rows = _read_csv(csv_path)
    assert header[:2] == ["index", "arch"] and {"raspi4", "pixel3", "fpga", "titan_rtx_1"} <= set(header)
    assert device_columns(csv_path) == header[2:]
    table = import_nb201_csv(csv_path, "pixel3", tmp_path / "p.json")
    assert len(table) == len(rows) and table.kind == "arch" and table.spaces == ["nb201"]
    if csv_path == NB201_CSV:
        assert len(rows) == 15625
    col = header.index("pixel3")
    for row in rows:   # the published value unchanged, in ms
        entry = table.get(ArchKey("nb201", row[1], "cifar10"))
        assert entry.median_ms == entry.p10_ms == entry.p90_ms == float(row[col])
        assert entry.n == 1 and entry.quality == "imported" and entry.extra == {"nb201_index": int(row[0])}
    assert table.provenance["licence"].startswith("MIT") and "HELP" in table.provenance["source"]
    assert table.provenance["csv"] == csv_path.name and table.provenance["column"] == "pixel3"
    assert load_table(tmp_path / "p.json", expect_space="nb201") == table
    with pytest.raises(TableError, match="no device column 'raspi5'; columns: 1080ti_1, .*raspi4"):
        import_nb201_csv(csv_path, "raspi5")


@pytest.mark.parametrize("column,device,batch,whole_ms,hw_nas_bench", [
    ("raspi4", "raspi4", None, False, True),
    ("pixel2", "pixel2", None, True, False),
    ("gold_6226", "gold_6226", None, False, False),
    ("titan_rtx_32", "titan_rtx", 32, False, False),
    ("1080ti_1", "1080ti", 1, False, False),
])
def test_nb201_import_records_each_column_s_device_batch_and_source(column, device, batch, whole_ms, hw_nas_bench):
    table = import_nb201_csv(NB201_SAMPLE, column, created="2025-01-31")
    assert table.device["name"] == device and table.device["description"] != ""
    assert table.runtime == {"backend": "unknown", **({"batch": batch} if batch else {})}
    assert (table.measurement.get("resolution_ms") == 1) == whole_ms
    assert ("HW-NAS-Bench" in table.provenance.get("original_source", "")) == hw_nas_bench
    assert table.created == "2025-01-31"


def _malformed(tmp_path: Path, edit) -> Path:
    """The sample CSV with ``edit(header, rows)`` applied (rows are lists of cells)."""
    header, rows = _read_csv(NB201_SAMPLE)
    edit(header, rows)
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    return path


def _set_pixel3(row: int, value: str):
    def edit(header, rows):
        rows[row][header.index("pixel3")] = value
    return edit


# Each malformed file is one TableError naming the file, and the line (1-based, header = 1) and
# the bad value where a row is at fault; nothing is returned half-imported.
@pytest.mark.parametrize("edit,match", [
    (_set_pixel3(2, "fast"), r"bad\.csv line 4: .*'fast'"),                             # non-numeric
    (_set_pixel3(2, ""), r"bad\.csv line 4: .*''"),                                     # empty cell
    (_set_pixel3(2, "-1.5"), r"bad\.csv line 4: median_ms: must be a positive .* got -1\.5"),
    (_set_pixel3(0, "0"), r"bad\.csv line 2: median_ms: must be a positive .* got 0\.0"),
    (_set_pixel3(3, "nan"), r"bad\.csv line 5: median_ms: must be a positive finite .* got nan"),
    (_set_pixel3(3, "inf"), r"bad\.csv line 5: median_ms: must be a positive finite .* got inf"),
    (_set_pixel3(2, "3.6ms"), r"bad\.csv line 4: .*'3\.6ms'"),                         # a unit in the cell
    (_set_pixel3(2, "0.0036 s"), r"bad\.csv line 4: .*'0\.0036 s'"),
    (lambda h, rows: rows[1].__setitem__(0, "one"), r"bad\.csv line 3: .*'one'"),       # index not an integer
    (lambda h, rows: rows[1].__setitem__(1, ""), r"bad\.csv line 3: arch must be a non-empty"),
    (lambda h, rows: h.remove("arch"), r"bad\.csv: expected a header 'index,arch,<device>\.\.\.'"),
    (lambda h, rows: h.__setitem__(slice(2, None), []), r"bad\.csv: expected a header"),  # no device column
    (lambda h, rows: h.remove("pixel3"), r"bad\.csv has no device column 'pixel3'"),      # column missing
    (lambda h, rows: h.__setitem__(h.index("pixel3"), "pixel3_ms"), r"no device column 'pixel3'"),  # unit in the header
], ids=["non-numeric", "empty", "negative", "zero", "nan", "inf", "unit-ms", "unit-s", "bad-index", "no-arch",
        "header-without-arch", "header-without-devices", "missing-column", "renamed-column"])
def test_nb201_import_refuses_a_malformed_csv(tmp_path, edit, match):
    with pytest.raises(TableError, match=match):
        import_nb201_csv(_malformed(tmp_path, edit), "pixel3")


def test_nb201_import_refuses_a_missing_or_empty_file(tmp_path):
    with pytest.raises(TableError, match=r"nope\.csv: cannot read it"):
        import_nb201_csv(tmp_path / "nope.csv", "pixel3")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match=r"empty\.csv: expected a header .* got None"):
        import_nb201_csv(tmp_path / "empty.csv", "pixel3")
    (tmp_path / "latin1.csv").write_bytes("index,arch,pixel3\n0,|caf\xe9~0|,1.0\n".encode("latin-1"))
    with pytest.raises(TableError, match=r"latin1\.csv"):
        import_nb201_csv(tmp_path / "latin1.csv", "pixel3")


def test_nb201_import_names_the_missing_field_of_a_short_row(tmp_path):
    path = _malformed(tmp_path, lambda h, rows: rows[1].__delitem__(slice(h.index("pixel3"), None)))
    with pytest.raises(TableError, match=r"bad\.csv line 3: .*(missing|fields|columns)"):
        import_nb201_csv(path, "pixel3")


def test_nb201_import_names_the_file_and_line_of_a_repeated_architecture(tmp_path):
    path = _malformed(tmp_path, lambda h, rows: rows.append(list(rows[0])))
    with pytest.raises(TableError, match=r"bad\.csv line 17: .*duplicate"):
        import_nb201_csv(path, "pixel3")


def test_bundled_tables_are_listed_and_resolved(tmp_path):
    names = list_bundled()
    assert {f"nb201_{d}" for d in BUNDLED_DEVICES} <= set(names)
    assert bundled_table_path("raspi4") == bundled_table_path("nb201_raspi4")
    assert bundled_table_path(str(bundled_table_path("raspi4"))) == bundled_table_path("raspi4")
    with pytest.raises(TableError, match="bundled tables: .*nb201_raspi4"):
        bundled_table_path("raspi5")


@pytest.mark.parametrize("device", ["raspi4", "titan_rtx_1"])
def test_bundled_tables_validate_and_hold_every_architecture(device):
    table = load_bundled(device, expect_space="nb201", expect_kind="arch")
    assert len(table) == 15625 and table.device["name"] in device
    indices = sorted(e.extra["nb201_index"] for e in table)
    assert indices == list(range(15625))
    with open(NB201_CSV if NB201_CSV.is_file() else NB201_SAMPLE, newline="") as f:
        for row in csv.DictReader(f):   # the bundled values are the CSV's, unchanged
            assert table.latency_ms(ArchKey("nb201", row["arch"], "cifar10")) == float(row[device])


# --- the `hwcost table` subcommands -----------------------------------------------------------------

def _run_cli(*argv: str) -> int:
    from hwcost.cmd_table import add_table_parser
    parser = argparse.ArgumentParser(prog="hwcost")
    add_table_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["table", *argv])
    return args.func(args)


def test_cli_table_subcommands(tmp_path, capsys):
    save_table(make_table(3), tmp_path / "a.json")
    save_table(make_table(5, samples=20), tmp_path / "b.json")
    assert _run_cli("validate", str(tmp_path / "a.json"), "--space", "darts") == 0
    assert capsys.readouterr().out.startswith("ok: 3 entries")
    with pytest.raises(TableError, match="but a nb201 table is needed"):
        _run_cli("validate", str(tmp_path / "a.json"), "--space", "nb201")
    assert _run_cli("show", str(tmp_path / "b.json"), "--limit", "2") == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and op_key(1).to_str() in out and op_key(2).to_str() not in out
    assert _run_cli("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m.json")) == 0
    assert "3 conflicts" in capsys.readouterr().out and len(load_table(tmp_path / "m.json")) == 5
    assert _run_cli("csv", str(tmp_path / "a.json")) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(op_key(0).to_str())
    assert _run_cli("validate", "raspi4") == 0 and "ok: 15625 entries" in capsys.readouterr().out


@pytest.mark.parametrize("csv_path", NB201_CSVS)
def test_cli_import_csv(csv_path, tmp_path, capsys):
    assert _run_cli("import-csv", str(csv_path), "--device", "eyeriss", "--out", str(tmp_path / "e.json")) == 0
    assert len(load_table(tmp_path / "e.json", expect_space="nb201")) == len(_read_csv(csv_path)[1])
    with pytest.raises(TableError, match="columns:"):
        _run_cli("import-csv", str(csv_path), "--device", "nope", "--out", str(tmp_path / "x.json"))


def test_table_layer_needs_only_the_standard_library():
    code = ("import sys; sys.modules['torch'] = sys.modules['numpy'] = None\n"
            "import device_tables, hwcost.cmd_table\n"
            "print(device_tables.load_bundled('raspi4').kind, device_tables.SCHEMA_VERSION)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.split() == ["arch", str(SCHEMA_VERSION)]


def test_user_errors_need_no_torch():
    """HwcostError and the table errors load without torch (and without spaces), are caught as
    documented, and torch-free modules raise them without loading torch."""
    code = ("import sys; sys.modules['torch'] = sys.modules['spaces'] = None\n"
            "from device_tables.errors import (USER_ERRORS, HwcostError, KeyFormatError, MissingKeyError,\n"
            "                                  TableError, UnknownNameError, unknown)\n"
            "import hwcost.cli, hwcost.cmd_predict, hwcost.cmd_search, hwcost.cmd_table\n"
            "from costmodels.incontext import check_confidence\n"
            "caught = []\n"
            "for make, kinds in ((lambda: HwcostError('h'), (HwcostError, ValueError)),\n"
            "                    (lambda: unknown('space', 'x', ['b', 'a']), (UnknownNameError, HwcostError, KeyError)),\n"
            "                    (lambda: TableError('t'), (TableError, ValueError)),\n"
            "                    (lambda: KeyFormatError('k'), (TableError,)),\n"
            "                    (lambda: MissingKeyError('m'), (TableError, KeyError)),\n"
            "                    (lambda: check_confidence(2.0), (HwcostError,))):\n"
            "    for kind in kinds + (USER_ERRORS, hwcost.cli._user_errors()):\n"
            "        try:\n"
            "            raise make()\n"
            "        except kind as e:\n"
            "            caught.append(str(e))\n"
            "assert not isinstance(TableError('t'), HwcostError)  # two families; the CLI catches both\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(len(caught), caught[4], '|', caught[-1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == ("23 unknown space 'x'; known: a, b | --confidence must be a probability strictly "
                           "between 0 and 1, got 2.0")
    from spaces import errors as spaces_errors
    from device_tables import errors
    assert (spaces_errors.HwcostError, spaces_errors.UnknownNameError, spaces_errors.unknown) == \
        (errors.HwcostError, errors.UnknownNameError, errors.unknown)
    assert errors.USER_ERRORS == (errors.HwcostError, TableError)
