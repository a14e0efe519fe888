"""Where a sweep's searches run (search/sweep.py): this process, a process pool, or Ray.

A backend runs task docs and calls ``on_done(index, outcome)`` as each finishes;
:func:`execute` runs one search anywhere and never raises.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

from spaces.errors import HwcostError

from .run import SearchConfig


def execute(doc: dict, search_fn: Callable | None = None) -> dict:
    """Run one search described by ``doc``; never raises: a failure comes back as a status and a message."""
    t0 = time.perf_counter()
    result, status, error = None, "ok", None
    try:
        import torch
        torch.set_num_threads(doc["threads"])
        cfg = SearchConfig(**{**doc["config"], "threads": doc["threads"]})
        if search_fn is None:
            from .run import run_search as search_fn
        result = search_fn(cfg, doc["run_dir"], resume=doc["resume"], progress=False)
    except Exception as e:  # noqa: BLE001 -- one failed search is a row of the table, not the end of the sweep
        status = "failed"
        error = _last_line(e) if isinstance(e, HwcostError) else f"{type(e).__name__}: {_last_line(e)}"
    wall = round(time.perf_counter() - t0, 2)
    info = {"status": status, "error": error, "wall_seconds": wall, "host": socket.gethostname()}
    try:
        Path(doc["run_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(doc["run_dir"]) / "sweep_task.json").write_text(json.dumps(info, indent=1))
    except OSError:
        pass
    return {**info, "result": result}


def _last_line(e: BaseException) -> str:
    """A message fit for one table cell: the last non-empty line (Ray errors carry a traceback)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__


# ---------------------------------------------------------------------------
# Backends: run task docs, call on_done(index, outcome) as each finishes


class SerialBackend:
    name = "serial"

    def __init__(self, search_fn: Callable | None = None):
        self.search_fn = search_fn

    def run(self, docs: list[dict], on_done) -> None:
        for i, doc in enumerate(docs):
            on_done(i, execute(doc, self.search_fn))

    def close(self) -> None:
        pass


class ProcessBackend:
    """``concurrent.futures`` process pool (spawned workers: no forked torch state)."""
    name = "process"

    def __init__(self, workers: int, search_fn: Callable | None = None):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        self.search_fn = search_fn
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))

    def run(self, docs: list[dict], on_done) -> None:
        from concurrent.futures import as_completed
        futures = {self.pool.submit(execute, doc, self.search_fn): i for i, doc in enumerate(docs)}
        for f in as_completed(futures):
            try:
                outcome = f.result()
            except Exception as e:  # noqa: BLE001 -- a worker that died (e.g. out of memory)
                outcome = {"status": "failed", "error": f"worker died: {type(e).__name__}: {_last_line(e)}",
                           "wall_seconds": None, "result": None}
            on_done(futures[f], outcome)

    def close(self) -> None:
        self.pool.shutdown()


class RayBackend:
    """Ray tasks, at most ``workers`` in flight, each reserving ``threads`` CPUs.

    Without ``address`` a local Ray is started with ``workers * threads`` CPUs
    and stopped at the end; with one, the sweep joins that cluster (its nodes
    need hwcost installed; run directories are written where each task runs and
    the results also come back to ``OUT``).
    """
    name = "ray"

    def __init__(self, workers: int, threads: int, address: str | None = None, search_fn: Callable | None = None):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no phoning home
        import ray
        self.ray, self.workers, self.threads, self.search_fn = ray, workers, threads, search_fn
        self.started = False
        if not ray.is_initialized():
            kw = dict(logging_level="ERROR", log_to_driver=False)
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=workers * threads, include_dashboard=False, **kw)
            except Exception as e:  # noqa: BLE001
                raise HwcostError(f"could not start Ray{' at ' + address if address else ''}: {e}; "
                                  f"use --backend process to run without Ray") from e
            self.started = True
        self.remote = ray.remote(num_cpus=threads, max_retries=0)(execute)

    def run(self, docs: list[dict], on_done) -> None:
        ray = self.ray
        queue, pending = list(enumerate(docs)), {}
        while queue or pending:
            while queue and len(pending) < self.workers:
                i, doc = queue.pop(0)
                pending[self.remote.remote(doc, self.search_fn)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- the task's worker died
                    outcome = {"status": "failed", "error": f"Ray task failed: {type(e).__name__}: {_last_line(e)}",
                               "wall_seconds": None, "result": None}
                on_done(i, outcome)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        return True
    except ImportError:
        return False
