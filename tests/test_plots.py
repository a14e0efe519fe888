"""Run-directory plots: a one-epoch run's alphas.png and costs.png show their points (issue 14)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

OPS = ["none", "skip_connect", "nor_conv_3x3"]


def _run_dir(tmp_path, epochs: int, steps: int):
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"ops": OPS, "metrics": ["params", "latency_ms"], "search": {"cost_mode": "derived"},
           "terms": [{"metric": "params", "kind": "hard", "value": 1e6}]}
    (run / "config.json").write_text(json.dumps(cfg))
    weights = [[[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]]     # one cell type, two edges
    (run / "alphas.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "weights": weights}) + "\n"
                                              for e in range(epochs)))
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s + 1, "costs": {"params": 9e5 + s, "latency_ms": 2.0}})
                                           + "\n" for s in range(steps)))
    return run


def _figures(monkeypatch) -> list:
    from matplotlib.figure import Figure
    saved, original = [], Figure.savefig

    def savefig(self, path, *a, **kw):
        saved.append((str(path), self))
        return original(self, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_a_one_epoch_run_draws_every_point_with_a_marker(tmp_path, monkeypatch):
    from search.plots import plot_run
    saved = _figures(monkeypatch)
    run = _run_dir(tmp_path, epochs=1, steps=1)
    written = plot_run(run)
    assert [p.name for p in written] == ["alphas.png", "costs.png"]
    figs = dict(saved)
    alphas = figs[str(run / "alphas.png")].axes[0]
    lines = [x for x in alphas.get_lines() if x.get_label() in OPS]
    assert len(lines) == len(OPS)
    for line in lines:   # one point each: visible only as a marker
        assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "", " ")
        assert line.get_markersize() > 0
    assert sorted(round(float(x.get_ydata()[0]), 3) for x in lines) == [0.2, 0.4, 0.4]   # edge means
    for ax in figs[str(run / "costs.png")].axes:
        cost = ax.get_lines()[0]
        assert len(cost.get_xdata()) == 1 and cost.get_marker() not in (None, "None", "", " ")
    assert all(p.stat().st_size > 0 for p in written)


def test_a_long_run_is_drawn_as_lines(tmp_path, monkeypatch):
    from search.plots import plot_run
    saved = _figures(monkeypatch)
    run = _run_dir(tmp_path, epochs=50, steps=200)
    plot_run(run)
    alphas = dict(saved)[str(run / "alphas.png")].axes[0]
    line = next(x for x in alphas.get_lines() if x.get_label() == OPS[0])
    assert len(line.get_xdata()) == 50 and line.get_linestyle() == "-"
