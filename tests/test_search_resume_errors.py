"""``hwcost search --resume`` on a run it cannot continue: one line, exit 2, the run directory untouched."""
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
