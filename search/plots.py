"""PNG plots of a run directory: alpha over time, costs against budgets."""
from __future__ import annotations

import json
from pathlib import Path


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _marker(n_points: int) -> dict:
    """Markers while the points are few: a line through one point draws nothing (a one-epoch run)."""
    return {"marker": "o", "markersize": 4} if n_points <= 30 else {}


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        fig.tight_layout()
        fig.savefig(run / "alphas.png", dpi=90)
        plt.close(fig)
        written.append(run / "alphas.png")

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
        fig.tight_layout()
        fig.savefig(run / "costs.png", dpi=90)
        plt.close(fig)
        written.append(run / "costs.png")
    return written
