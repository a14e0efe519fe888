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


def cpu_id() -> str | None:
    """What tells two CPUs sold under one model name apart (cloud VMs report "AMD EPYC" for
    several generations): vendor family / model / stepping and the vector extensions that
    change kernels (AVX-512, VNNI, AMX). None where /proc/cpuinfo is not readable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            block = f.read().split("\n\n", 1)[0]
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
    if "cpu family" not in fields:
        return None
    flags = set(fields.get("flags", "").split())
    vec = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return (f"{fields.get('vendor_id', '?')} family {fields['cpu family']} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')}" + (f"; {' '.join(vec)}" if vec else ""))


def host_label(device: dict | None = None) -> str:
    """A CPU as figures should name it: model name and, when known, its identity."""
    d = device if device is not None else {"cpu": cpu_model(), "cpu_id": cpu_id()}
    return d.get("cpu", "?") + (f" [{d['cpu_id']}]" if d.get("cpu_id") else "")


def same_host(device: dict) -> tuple[bool, str]:
    """Whether a table's ``device`` is this machine's CPU: (answer, why). A table that records
    no ``cpu_id`` is compared by model name only, and the answer says so."""
    here_cpu, here_id = cpu_model(), cpu_id()
    if device.get("cpu") != here_cpu:
        return False, f"it was measured on {host_label(device)!r}, this host is {host_label()!r}"
    if device.get("cpu_id") and here_id and device["cpu_id"] != here_id:
        return False, f"it was measured on {host_label(device)!r}, this host is {host_label()!r}"
    if not device.get("cpu_id"):
        return True, f"same CPU name {here_cpu!r} (the table records no cpu_id: its generation is unknown)"
    return True, f"same CPU {host_label()!r}"


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
        "cpu_id": cpu_id(),
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
