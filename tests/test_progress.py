"""Progress goes to a terminal as a bar; to a log file or a pipe as one plain line per epoch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_search_logging_to_a_file_writes_one_line_per_epoch(tmp_path):
    code = ("from search.run import SearchConfig, run_search; "
            "run_search(SearchConfig(space='nb201', strategy='pdarts', stages=[3, 3], data='synthetic', epochs=2, "
            "steps_per_epoch=2, batch_size=8, C=4, layers=3, threads=1), 'run', progress=True)")
    log = tmp_path / "stderr.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, stderr=f, check=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = log.read_text()
    assert "\r" not in text
    lines = [x for x in text.splitlines() if x.startswith("search ")]
    assert len(lines) == 4, text                      # 2 stages x 2 epochs
    assert lines[0].startswith("search epoch 1/2 (stage 1/2): step 2, loss_train")
    assert lines[-1].startswith("search epoch 2/2 (stage 2/2): step 8,")


def test_a_training_run_without_a_terminal_writes_one_line_per_epoch(tmp_path, capsys):
    from search.train import TrainConfig, run_train
    run_train(TrainConfig(genotype="DARTS_V2", data="synthetic", C=4, layers=3, batch_size=32, epochs=2,
                          steps_per_epoch=2, threads=1, network=None), tmp_path / "t", progress=True)
    err = capsys.readouterr().err          # pytest's capture is not a terminal
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("train ")]
    assert [x.split(":")[0] for x in lines] == ["train epoch 1/2", "train epoch 2/2"]
    assert "val_acc" in lines[-1]
