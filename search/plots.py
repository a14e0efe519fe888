"""PNG plots: a run directory's alphas over time and costs against budgets; a sweep's Pareto
front and look-up graph. matplotlib is optional: each plot raises ImportError without it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _marker(n_points: int) -> dict:
    """Markers while the points are few: a line through one point draws nothing (a one-epoch run)."""
    return {"marker": "o", "markersize": 4} if n_points <= 30 else {}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    plt = _pyplot()
    run = Path(run_dir)
    cfg = json.loads((run / "config.json").read_text())
    ops, written = cfg["ops"], []

    alphas = _read(run / "alphas.jsonl")
    if alphas:
        n_types = len(alphas[0]["weights"])
        fig, axes = plt.subplots(1, n_types, figsize=(6 * n_types, 4), squeeze=False)
        epochs = [a["epoch"] for a in alphas]
        for k in range(n_types):
            ax = axes[0][k]
            for o, name in enumerate(ops):  # mean weight of each op over the cell's edges
                ys = [sum(edge[o] for edge in a["weights"][k]) / len(a["weights"][k]) for a in alphas]
                ax.plot(epochs, ys, label=name, **_marker(len(epochs)))
            ax.set_title(f"cell type {k}: mean softmax(alpha) per op")
            ax.set_xlabel("epoch")
        axes[0][-1].legend(fontsize=7)
        written.append(_save(fig, run / "alphas.png"))

    log = _read(run / "log.jsonl")
    budgets = {t["metric"]: t["value"] for t in cfg["terms"] if t["kind"] == "hard"}
    if log:
        metrics = [m for m in cfg["metrics"] if m in log[-1]["costs"]]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
        steps = [r["step"] for r in log]
        for ax, m in zip(axes[0], metrics):
            ax.plot(steps, [r["costs"][m] for r in log], label="cost of the network now derived"
                    if cfg["search"]["cost_mode"] == "derived" else "expected cost", **_marker(len(steps)))
            if m in budgets:
                ax.axhline(budgets[m], color="r", ls="--", label="budget")
            ax.set_title(m)
            ax.set_xlabel("step")
        axes[0][0].legend(fontsize=7)
        written.append(_save(fig, run / "costs.png"))
    return written


def plot_pareto(rows: list[dict], path: Path, budget_lines: Iterable[float] = ()) -> None:
    """A sweep's searches: derived cost against supernet validation accuracy, the front in red."""
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "ok" and r.get("cost") is not None
          and r.get("supernet_val_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if ok:
        ax.scatter([r["cost"] for r in ok], [r["supernet_val_accuracy"] for r in ok], c="0.6", s=18,
                   label="searches")
        front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["cost"])
        ax.plot([r["cost"] for r in front], [r["supernet_val_accuracy"] for r in front], "o-", c="C3",
                label="Pareto front")
        metric = ok[0].get("metric", "cost")
        ax.set_xlabel(f"derived {metric} (target network)")
    for b in budget_lines:
        ax.axvline(b, ls="--", c="k", lw=1)
    ax.set_ylabel("supernet validation accuracy")
    failed = sum(r["status"] != "ok" for r in rows)
    ax.set_title(f"{len(ok)} searches" + (f", {failed} failed" if failed else ""))
    if ok:
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_pareto_2d(rows: list[dict], path: Path, metrics: list[str], grid: dict | None = None) -> None:
    """A sweep over budgets on two resources (e.g. the latency on two devices): each search's derived
    costs on the two axes, coloured by supernet validation accuracy, the front (taken over every swept
    cost and the accuracy) ringed in red, the budget grid dashed."""
    plt = _pyplot()
    mx, my = metrics[:2]
    ok = [r for r in rows if r["status"] == "ok" and r.get(f"cost@{mx}") is not None
          and r.get(f"cost@{my}") is not None and r.get("supernet_val_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if ok:
        sc = ax.scatter([r[f"cost@{mx}"] for r in ok], [r[f"cost@{my}"] for r in ok],
                        c=[r["supernet_val_accuracy"] for r in ok], cmap="viridis", s=28, zorder=3)
        fig.colorbar(sc, ax=ax, label="supernet validation accuracy")
        front = [r for r in ok if r.get("pareto")]
        ax.scatter([r[f"cost@{mx}"] for r in front], [r[f"cost@{my}"] for r in front], s=110,
                   facecolors="none", edgecolors="C3", lw=1.5, zorder=4, label="Pareto front")
        ax.legend(fontsize=8, loc="upper left")
    for b in (grid or {}).get(mx, []):
        ax.axvline(b, ls="--", c="0.7", lw=0.8)
    for b in (grid or {}).get(my, []):
        ax.axhline(b, ls="--", c="0.7", lw=0.8)
    ax.set_xlabel(f"derived {mx}")
    ax.set_ylabel(f"derived {my}")
    failed = sum(r["status"] != "ok" for r in rows)
    ax.set_title(f"{len(ok)} searches" + (f", {failed} failed" if failed else "") + ": budgets on two resources")
    _save(fig, path)


def plot_lookup(graph, path: Path, picks: list[dict] = ()) -> None:
    """DCA-NAS's look-up graph (:class:`search.sweep_math.LookupGraph`): searches, fit and picks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(*zip(*graph.points), "o", label="searches")
    ax.plot(graph.xs, graph.ys, "-", c="C1", label="monotone fit")
    lo, hi = min(graph.xs + graph.ys), max(graph.xs + graph.ys)
    ax.plot([lo, hi], [lo, hi], ":", c="0.5", label="eval cost = constraint")
    for p in picks:
        if p.get("constraint") is not None:   # a refused pick has no constraint to mark
            ax.plot([p["constraint"]], [p["target"]], "x", c="C3", ms=8)
    ax.set_xlabel(f"search constraint K_d' ({graph.metric})")
    ax.set_ylabel(f"derived network's {graph.metric} K_d")
    ax.legend(fontsize=8)
    _save(fig, path)
