"""``hwcost search --resume`` on a run it cannot continue: one line, exit 2, the run directory untouched."""
import json
import shutil

import pytest

from hwcost.cli import main

TINY = ["--space", "nb201", "--data", "synthetic", "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "16", "--C", "4", "--layers", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", *TINY, "--json", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_dir(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hwcost: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("damage", ["cut in half", "empty", "not a checkpoint", "foreign tensors"])
def test_resume_from_a_corrupt_checkpoint_is_one_line_and_loses_nothing(run_dir, capsys, damage):
    ckpt = run_dir / "checkpoint.pt"
    data = ckpt.read_bytes()
    if damage == "cut in half":
        ckpt.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "not a checkpoint":
        ckpt.write_text("hello\n")
    else:                       # a readable checkpoint of something else
        import torch
        torch.save({"weights": torch.zeros(3)}, ckpt)
    before = snapshot(run_dir)
    err = one_line_error(capsys, ["search", *TINY, "--out", str(run_dir), "--resume"])
    assert f"cannot resume from {ckpt}" in err
    assert snapshot(run_dir) == before          # logs, config, result and the checkpoint itself


# --- the run's settings come from its config.json -------------------------------------------------

def test_resume_with_only_out_continues_with_the_runs_settings(tmp_path, capsys, monkeypatch):
    from search.run import SearchRun
    args = [*TINY, "--epochs", "2", "--seed", "5", "--penalty", "params=1e-7", "--json"]
    assert main(["search", *args, "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out)
    real, calls = SearchRun._step, {"n": 0}

    def dying(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:                 # epoch 2, first step: the checkpoint holds epoch 1
            raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(SearchRun, "_step", dying)
    assert main(["search", *args, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(SearchRun, "_step", real)
    capsys.readouterr()
    # Only --out: the defaults (darts space, C 8, 5 layers, no penalty ...) must not replace the run's settings.
    assert main(["search", "--resume", "--out", str(tmp_path / "cut"), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["arch"] == full["arch"] and resumed["derived"] == full["derived"]
    assert resumed["penalties"] == {"params": 1e-7}
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())["search"]
    assert (saved["space"], saved["C"], saved["layers"], saved["seed"]) == ("nb201", 4, 3, 5)


@pytest.mark.parametrize("extra,named", [
    (["--strategy", "pcdarts", "--C", "8", "--layers", "5"],
     ["--strategy pcdarts (the run's: darts)", "--C 8 (the run's: 4)", "--layers 5 (the run's: 3)"]),
    (["--space", "darts"], ["--space darts (the run's: nb201)"]),
    (["--budget", "params=1M"], ["--budget params=1M (the run's: none)"]),
    (["--seed", "0", "--epochs", "3"], ["--epochs 3 (the run's: 1)"]),
])
def test_resume_with_contradicting_options_is_one_line_naming_them(run_dir, capsys, extra, named):
    before = snapshot(run_dir)
    # the run's own values (TINY) restated, then the contradictions: only these are named
    err = one_line_error(capsys, ["search", *TINY, *extra, "--out", str(run_dir), "--resume"])
    for text in named:
        assert text in err, err
    assert "contradict" in err and "--seed" not in err and "--threads" not in err
    assert snapshot(run_dir) == before


def test_resume_accepts_restated_settings_and_speed_options(run_dir, capsys):
    # the run's settings restated (C, layers), and what only changes speed (threads, the plain cell)
    code = main(["search", "--resume", "--out", str(run_dir), "--C", "4", "--layers", "3", "--space", "nb201",
                 "--threads", "2", "--plain", "--json"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run_dir / "config.json").read_text())["search"]
    assert (saved["threads"], saved["fast"], saved["C"]) == (2, False, 4)


def test_api_resume_with_other_settings_names_them(run_dir):
    from search.run import SearchConfig, SearchRun
    from spaces import HwcostError
    cfg = SearchConfig(space="nb201", data="synthetic", epochs=1, steps_per_epoch=2, batch_size=16, C=8, layers=3,
                       threads=1)
    before = snapshot(run_dir)
    with pytest.raises(HwcostError, match=r"other settings \(C: 4 -> 8\)"):
        SearchRun(cfg, run_dir, resume=True)
    assert snapshot(run_dir) == before
