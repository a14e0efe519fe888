"""hwcost train: the DARTS evaluation recipe, checked against independent facts.

cutout against hand-computed squares; the drop-path ramp against p*e/T; the
aux weight against the gradient ratio it must produce; learning against
chance; resume against an uninterrupted run (bitwise); errors as one line.
"""
import json

import pytest
import torch

from search.augment import cutout, cutout_centers, random_crop_flip
from search.train import TrainConfig, TrainRun, held_out_split, run_train
from spaces import HwcostError

# A tiny network on synthetic 16x16 data: a step takes milliseconds.
TINY = dict(genotype="DARTS_V2", data="synthetic", C=4, layers=3, batch_size=32, epochs=3,
            steps_per_epoch=3, threads=1, network=None)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


# --- cutout -------------------------------------------------------------------------------


def _zero_box(img: torch.Tensor):
    """(rows, cols) spanned by the zeros of a 2-D map, and whether the zeros fill that box."""
    zr, zc = torch.nonzero(img == 0, as_tuple=True)
    r0, r1, c0, c1 = int(zr.min()), int(zr.max()) + 1, int(zc.min()), int(zc.max()) + 1
    return (r0, r1), (c0, c1), int((img[r0:r1, c0:c1] == 0).sum()) == (r1 - r0) * (c1 - c0) == len(zr)


@pytest.mark.parametrize("length", [4, 5])
def test_cutout_zeroes_exactly_the_clipped_square(length):
    x = torch.rand(6, 3, 12, 10) + 1.0                         # no zeros before
    centers = torch.tensor([[6, 5], [0, 0], [11, 9], [0, 9], [2, 5], [11, 0]])
    y = cutout(x, length, centers=centers)
    for i, (cy, cx) in enumerate(centers.tolist()):
        top, left = cy - length // 2, cx - length // 2
        rows = (max(top, 0), min(top + length, 12))
        cols = (max(left, 0), min(left + length, 10))
        for ch in range(3):                                    # the same square in every channel
            r, c, full = _zero_box(y[i, ch])
            assert (r, c) == (rows, cols) and full
        keep = torch.ones(12, 10, dtype=torch.bool)
        keep[rows[0]:rows[1], cols[0]:cols[1]] = False
        assert torch.equal(y[i][:, keep], x[i][:, keep])      # nothing else changed
    assert (y[0] == 0).sum() == 3 * length * length           # an inner square is whole


def test_cutout_is_seeded_and_length_zero_is_identity():
    x = torch.rand(64, 1, 8, 8) + 1.0
    a = cutout(x, 4, torch.Generator().manual_seed(1))
    b = cutout(x, 4, torch.Generator().manual_seed(1))
    c = cutout(x, 4, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert cutout(x, 0) is x
    # Random squares are clipped L x L squares: side L unless they touch the border.
    for img in a[:, 0]:
        (r0, r1), (c0, c1), full = _zero_box(img)
        assert full
        assert r1 - r0 == 4 or r0 == 0 or r1 == 8
        assert c1 - c0 == 4 or c0 == 0 or c1 == 8
    # Centres are uniform over the image: every row and column is drawn in 2,000 samples.
    cen = cutout_centers(2000, 8, 8, torch.Generator().manual_seed(0))
    assert set(cen[:, 0].tolist()) == set(range(8)) == set(cen[:, 1].tolist())
    with pytest.raises(HwcostError, match=">= 0"):
        cutout(x, -1)


def test_random_crop_flip_shifts_and_mirrors():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    y = random_crop_flip(x, 1, False, torch.Generator().manual_seed(0))
    for img, src in zip(y[:, 0], x[:, 0]):
        padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
        assert any(torch.equal(img, padded[dy:dy + 4, dx:dx + 4]) for dy in range(3) for dx in range(3))
    f = random_crop_flip(x.repeat(50, 1, 1, 1), 0, True, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(a, b.flip(1)) for a, b in zip(f[:, 0], x.repeat(50, 1, 1, 1)[:, 0])]
    assert 20 < sum(mirrored) < 80                             # about half of 100


# --- the recipe ---------------------------------------------------------------------------


def test_drop_path_ramps_linearly_and_reaches_the_cells(tmp_path, monkeypatch):
    run = TrainRun(tiny(epochs=4, drop_path=0.3, steps_per_epoch=1), tmp_path / "r")
    seen = []
    step = TrainRun.train_step

    def spy(self, x, y, n):
        seen.append({c.drop_prob for c in self.model.cells})
        return step(self, x, y, n)
    monkeypatch.setattr(TrainRun, "train_step", spy)
    run.run(progress=False)
    want = [0.3 * e / 4 for e in range(4)]                      # DARTS: p * epoch / epochs
    assert [s.pop() for s in seen] == pytest.approx(want) and all(not s for s in seen)
    logged = [json.loads(x)["drop_path"] for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(want)


def test_aux_loss_weight_scales_only_the_aux_gradient(tmp_path):
    grads = {}
    for w in (1.0, 0.4):
        run = TrainRun(tiny(auxiliary=w, seed=5), tmp_path / f"w{w}")
        run.set_train_mode()
        x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
        torch.manual_seed(0)                                    # same drop-path masks
        run.loss(x, y)[0].backward()
        grads[w] = {n: p.grad.clone() for n, p in run.model.named_parameters()}
    aux = [n for n in grads[1.0] if n.startswith("auxiliary_head")]
    main = [n for n in grads[1.0] if n.startswith("classifier")]
    assert aux and main
    for n in aux:       # the head's parameters see only w * CE(aux): their gradient scales by w
        torch.testing.assert_close(grads[0.4][n], 0.4 * grads[1.0][n])
    for n in main:      # the classifier sees only CE(logits): unchanged
        torch.testing.assert_close(grads[0.4][n], grads[1.0][n])
    run0 = TrainRun(tiny(auxiliary=0.0), tmp_path / "w0")
    assert run0.model.auxiliary_head is None                    # weight 0: no head at all


def test_digits_training_beats_chance_by_far(tmp_path):
    r = run_train(TrainConfig(genotype="DARTS_V2", data="digits", C=8, layers=3, epochs=2, batch_size=64,
                              threads=1, network=None), tmp_path / "r", progress=False)
    assert r["test_accuracy"] > 0.6                             # 10 classes: chance is 0.1
    assert r["heldout_samples"] == 359                          # data.py's 20% digits test split
    logs = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in logs] == [0, 1]
    assert logs[1]["loss"] < logs[0]["loss"]
    assert [l["lr"] for l in logs] == pytest.approx([0.025, 0.0125])   # cosine at t = 0, T/2
    assert logs[-1]["val_acc"] == pytest.approx(r["test_accuracy"])
    assert r["trained"]["params"] < r["trained"]["params_with_aux"]
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "result.json"):
        assert (tmp_path / "r" / name).exists()


def test_cpa_schedule_is_used(tmp_path):
    from search.schedules import lr_at
    run_train(tiny(schedule="cpa", power=10, epochs=3, steps_per_epoch=1), tmp_path / "r", progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([lr_at(e, 3, 0.025, 0.0, "cpa", 10) for e in range(3)])
    assert lrs[1] < lr_at(1, 3, 0.025, 0.0, "cosine")           # p = 10 decays faster than cosine


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny(epochs=3, steps_per_epoch=3, drop_path=0.2, seed=7)   # drop-path, cutout, aux all on
    full = run_train(cfg, tmp_path / "full", progress=False)
    step = TrainRun.train_step

    def crash_in_epoch_2(self, x, y, n):
        # Mid-epoch, after epoch 1 drew drop-path masks from the global RNG: a resume that did not
        # reseed per epoch would draw different masks from here on.
        if self.epoch == 2 and self.step == 7:
            raise KeyboardInterrupt
        return step(self, x, y, n)
    monkeypatch.setattr(TrainRun, "train_step", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(TrainRun, "train_step", step)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(HwcostError, match="not empty; pass --resume"):
        TrainRun(cfg, tmp_path / "cut")
    resumed = run_train(cfg, tmp_path / "cut", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k    # bitwise
    assert resumed["test_accuracy"] == full["test_accuracy"]
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "cut" / "log.jsonl") == strip(tmp_path / "full" / "log.jsonl")
    with pytest.raises(HwcostError, match="other settings.*lr"):
        TrainRun(tiny(epochs=3, steps_per_epoch=3, drop_path=0.2, seed=7, lr=0.1), tmp_path / "cut", resume=True)


def test_nonfinite_loss_stops_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(epochs=3, steps_per_epoch=2)
    step = TrainRun.train_step

    def poison(self, x, y, n):
        if self.epoch == 2:
            x = x * float("nan")
        return step(self, x, y, n)
    monkeypatch.setattr(TrainRun, "train_step", poison)
    with pytest.raises(HwcostError, match=r"non-finite loss .*checkpoint\.pt \(epoch 2\)"):
        run_train(cfg, tmp_path / "r", progress=False)
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["epoch"] == 2   # intact


def test_held_out_split_is_disjoint_and_fixed():
    from search.data import synthetic
    d = synthetic(n=100)
    tr, te = held_out_split(d)
    assert len(te) == 20 and len(tr) == 80
    assert not set(tr.indices) & set(te.indices)
    assert held_out_split(d)[1].indices == te.indices


def test_from_search_trains_the_derived_genotype(tmp_path):
    from spaces import BUILTIN_GENOTYPES
    g = BUILTIN_GENOTYPES["PDARTS"][1]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "result.json").write_text(json.dumps({"space": "darts", "genotype": g.to_dict()}))
    run = TrainRun(tiny(genotype=None, from_search=str(tmp_path / "s")), tmp_path / "r")
    assert run.arch == g
    assert [type(op).__name__ for op in run.model.cells[0].ops] == \
           [type(op).__name__ for op in TrainRun(tiny(genotype="PDARTS"), tmp_path / "r2").model.cells[0].ops]


def test_nb201_arch_trains_and_rejects_aux(tmp_path):
    arch = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    r = run_train(tiny(space="nb201", genotype=None, arch=arch, C=4, layers=1, epochs=1), tmp_path / "r",
                  progress=False)
    assert r["arch"] == arch and r["trained"]["layers"] == 1
    with pytest.raises(HwcostError, match="no auxiliary head"):
        TrainRun(tiny(space="nb201", genotype=None, arch=arch, auxiliary=0.4), tmp_path / "x")


# --- the CLI ------------------------------------------------------------------------------


def _main(argv, monkeypatch):
    """``hwcost ARGV`` in this process."""
    from hwcost import cli
    return cli.main(argv)


@pytest.mark.parametrize("args,match", [
    (["--genotype", "NOT_A_GENOTYPE"], "unknown genotype"),
    (["--genotype", "DARTS_V2", "--data", "cifar10:/no/such/dir"], "no CIFAR-10 batches in /no/such/dir"),
    (["--genotype", "DARTS_V2", "--data", "imagefolder:/no/such/dir"], "does not exist"),
    (["--space", "nb201", "--arch", "|bad~0|"], "arch|op|nb201"),
    (["--genotype", "DARTS_V2", "--arch", "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"], "give one network"),
    (["--genotype", "DARTS_V2", "--table", "nb201_raspi4"], "architecture-level"),
    (["--genotype", "DARTS_V2", "--epochs", "0"], "--epochs must be >= 1"),
    (["--from-search", "/no/such/run"], "no search result"),
])
def test_cli_errors_are_one_line_exit_2(args, match, tmp_path, capsys, monkeypatch):
    code = _main(["train", *args, "--out", str(tmp_path / "r")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hwcost: error:") and err.count("\n") == 1, err
    import re
    assert re.search(match, err, re.I), err
    assert not (tmp_path / "r").exists()                       # nothing half-made


def test_cli_reports_accuracy_and_costs_per_table(tmp_path, capsys, monkeypatch):
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    code = _main(["train", "--space", "nb201", "--arch", arch, "--data", "synthetic", "--C", "4", "--layers", "1",
                  "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--threads", "1",
                  "--table", "nb201_raspi4", "--table", "nb201_torch-cpu", "--json", "--out", str(tmp_path / "r")],
                 monkeypatch)
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r == json.loads((tmp_path / "r" / "result.json").read_text())
    from device_tables import ArchKey, load_bundled
    lat = r["deployed"]["latency"]
    measured = load_bundled("nb201_raspi4").get(ArchKey("nb201", arch, "cifar10")).median_ms
    assert lat["nb201_raspi4"]["latency_ms"] == measured          # the table's own entry
    from costmodels.predict import predict_nb201
    assert lat["nb201_torch-cpu"]["latency_ms"] == pytest.approx(
        predict_nb201(arch, load_bundled("nb201_torch-cpu")).latency_ms)
    from costmodels.analytical import count_params
    from spaces import Nb201NetConfig, build_network
    assert r["deployed"]["params"] == count_params(build_network(Nb201NetConfig(arch)))
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["trained"]["C"] == 4
