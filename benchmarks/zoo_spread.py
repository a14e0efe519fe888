"""How much each model's in-context ratio moves between runs of the same zoo (nothing measured).

    .venv/bin/python benchmarks/zoo_spread.py RESULT.json RESULT.json [...]

For every model that all the saved ``zoo_accuracy.py`` results share: its
measured time over its node (layer) sum in each run, that ratio divided by
its run's median ratio (the host's phase taken out), and the spread of the
latter across runs (largest / smallest).  A model whose relative ratio moves
by s between runs cannot be predicted from other models to better than about
s/2 either way, whatever the in-context model: the noise floor of the zoo
target (within +-10 %).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def spread(results: list[dict]) -> list[tuple[str, list[float], float]]:
    """[(model, [ratio / run median per run], max / min)] over the models every result holds,
    largest spread first."""
    runs = [{r["model"]: r["measured_ms"] / r["sum_of_ops_ms"] for r in d["rows"]} for d in results]
    common = [m for m in runs[0] if all(m in r for r in runs[1:])]
    if not common:
        raise SystemExit("the results share no model")
    medians = [statistics.median(r[m] for m in common) for r in runs]
    rows = []
    for m in common:
        rel = [r[m] / med for r, med in zip(runs, medians)]
        rows.append((m, rel, max(rel) / min(rel)))
    return sorted(rows, key=lambda row: -row[2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="zoo_accuracy.py result files (.json), two or more")
    args = ap.parse_args()
    if len(args.results) < 2:
        ap.error("give at least two results")
    results = [json.loads(Path(p).read_text()) for p in args.results]
    for p, d in zip(args.results, results):
        print(f"{Path(p).name}: {d['machine'].get('label', '?')}")
    rows = spread(results)
    print(f"\n{'model':<22} " + " ".join(f"{'run ' + str(i + 1):>7}" for i in range(len(results)))
          + "   spread (ratio to its run's median ratio, max / min)")
    for m, rel, s in rows:
        print(f"{m:<22} " + " ".join(f"{v:7.3f}" for v in rel) + f"   {s:.3f}")
    print(f"\nmedian spread {statistics.median(s for _, _, s in rows):.3f}; largest {rows[0][2]:.3f} ({rows[0][0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
