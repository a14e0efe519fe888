"""What a measurement ran on: recorded in every table so that a number is never
separated from its machine."""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    pairs = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    return len(pairs) or None


def device_info(name: str | None = None, accelerator: str | None = None) -> dict:
    """The ``device`` field of a table: the machine, with ``name`` defaulting to the CPU
    (or accelerator) model."""
    cpu = cpu_model()
    info = {
        "name": name or accelerator or cpu,
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    if accelerator:
        info["accelerator"] = accelerator
    return info


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
