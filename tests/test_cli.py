"""The CLI: outputs, and one clear error (exit 2, no traceback) for each bad input."""
import json
import subprocess
import sys

import onnx
import pytest

from hwcost.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cost_json_has_the_contract_fields(capsys):
    code, out, _ = run(capsys, "cost", "--space", "darts", "--genotype", "DARTS_V2", "--network", "cifar10", "--json")
    d = json.loads(out)
    assert code == 0
    assert {"params", "params_with_aux", "macs", "activation_bytes", "model_bytes"} <= set(d)
    assert 3.3e6 < d["params"] < 3.4e6 < d["params_with_aux"]


def test_cost_readable_table_in_millions(capsys):
    code, out, _ = run(capsys, "cost", "--space", "nb201", "--arch",
                       "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    assert code == 0 and "params" in out and " M" in out


def test_export_writes_a_checked_model(capsys, tmp_path):
    path = tmp_path / "n.onnx"
    code, out, _ = run(capsys, "export", "--space", "nb201", "--arch",
                       "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
                       "--onnx", str(path), "--json")
    assert code == 0
    d = json.loads(out)
    assert d["max_abs_diff"] <= 1e-4
    onnx.checker.check_model(onnx.load(str(path)))


def test_spaces_lists_every_space(capsys):
    code, out, _ = run(capsys, "spaces", "--json")
    assert {s["space"] for s in json.loads(out)} == {"darts", "sharpdarts", "nb201"}


BAD = [
    (["cost", "--space", "nope", "--genotype", "DARTS_V2"], "unknown space"),
    (["cost", "--genotype", "DARTS_V9"], "unknown genotype"),
    (["cost", "--genotype", "DARTS_V2", "--network", "mnist"], "unknown network"),
    (["cost", "--space", "nb201", "--arch", "|nor_conv_3x3~0|+|none~0|"], "bad NB201 architecture"),
    (["cost", "--space", "nb201"], "needs --arch"),
    (["cost", "--space", "darts"], "needs --genotype"),
    (["export", "--genotype", "DARTS_V2", "--onnx", "/nonexistent/dir/x.onnx"], "does not exist"),
]


@pytest.mark.parametrize("argv,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_clear_error(capsys, argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_genotype_files(capsys, tmp_path):
    bad_edge = tmp_path / "edge.json"
    bad_edge.write_text('{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 9], ["sep_conv_3x3", 0], '
                        '["sep_conv_3x3", 1]], "normal_concat": [2, 3], "reduce": [["max_pool_3x3", 0], '
                        '["max_pool_3x3", 1], ["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2, 3]}')
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe not text")
    for path, match in ((bad_edge, "inputs 0..1"), (garbage, "cannot read genotype")):
        code, _, err = run(capsys, "cost", "--genotype", str(path))
        assert code == 2 and match in err and "Traceback" not in err


def test_real_process_exit_code_and_no_traceback():
    p = subprocess.run([sys.executable, "-m", "hwcost.cli", "cost", "--genotype", "NOPE"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("hwcost: error: unknown genotype") and "Traceback" not in p.stderr


def test_search_options_left_out_are_not_given_and_take_the_config_defaults():
    """``hwcost search`` knows which options the user gave (a resume must not read a default as a
    contradiction of the run's settings); left out, SearchConfig's defaults hold."""
    from hwcost.cli import build_parser
    from hwcost.cmd_search import _given_settings
    from search.run import SearchConfig
    parser = build_parser()
    assert _given_settings(parser.parse_args(["search", "--out", "x"])) == {}
    given = _given_settings(parser.parse_args([
        "search", "--out", "x", "--space", "darts", "--strategy", "pdarts", "--C", "8", "--budget", "params=1M",
        "--stages", "5,11", "--skip-dropout", "0.1,0.4", "--plain", "--max-w", "--no-share-weights", "--seed", "0"]))
    assert given == {"space": "darts", "strategy": "pdarts", "C": 8, "budgets": ["params=1M"], "stages": [5, 11],
                     "skip_dropout": [0.1, 0.4], "fast": False, "max_w": True, "share_weights": False, "seed": 0}
    assert SearchConfig(**given).stages == [5, 11]
