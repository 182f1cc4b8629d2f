"""What a number was computed on: the CPU model, core and thread counts, and torch's kernel libraries.

CPU results are bit-identical only for the same CPU model (more precisely: the same kernel paths that torch, MKL and
oneDNN pick for it), the same torch thread count and the same package versions (README, "Determinism"). So every
``results.json`` (``"machine"``), the demo's printed block and the benchmark scripts record exactly those things —
and nothing that identifies a host (no hostname, user or path).

``python -m vlrouting.machine`` prints the one-line summary; ``--json`` the full record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def read_cpuinfo(cpuinfo: str | None = None) -> dict:
    """``cpu_model`` — /proc/cpuinfo's ``model name`` (x86), else ``Hardware``/``Processor`` (ARM), else platform —
    and ``cpu_id`` (vendor, family, model, stepping where present: virtual machines often report only a generic
    name such as "AMD EPYC", and the family/model numbers still tell the generations apart)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    name = next((fields[k] for k in ("model name", "hardware", "processor")
                 # x86's "processor" field is the core index, not a name
                 if fields.get(k) and not fields[k].isdigit()), None)
    parts = [fields.get("vendor_id") or fields.get("cpu implementer")]
    for label, key in (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"),
                       ("part", "cpu part"), ("variant", "cpu variant")):
        if fields.get(key):
            parts.append(f"{label} {fields[key]}")
    cpu_id = " ".join(p for p in parts if p) or None
    return {"cpu_model": name or platform.processor() or platform.machine() or "unknown", "cpu_id": cpu_id}


def torch_build(config_text: str | None = None) -> dict:
    """BLAS library and version, oneDNN version and the compiled CPU capability, read from torch's build config."""
    text = torch.__config__.show() if config_text is None else config_text

    def find(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    return {"blas": find(r"BLAS_INFO=(\w+)"),
            "mkl": find(r"Math Kernel Library Version ([0-9][\w.]*)"),
            "onednn": find(r"(?:MKL-DNN|oneDNN) v([0-9][\w.]*)")}


def machine_info() -> dict:
    """The record stored in every ``results.json`` under ``"machine"``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        **read_cpuinfo(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        # The SIMD level torch's own kernels dispatch to (AVX2 / AVX512 / ...): it changes float reductions.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **torch_build(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_line(info: dict | None = None) -> str:
    """``Machine: AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, x86_64, 2 logical cores), torch 2.13.0 on 2
    threads, AVX2 kernels, BLAS mkl 2024.2, oneDNN 3.12.0`` (a GPU, when there is one, is appended)."""
    i = machine_info() if info is None else info
    cores = f"{i['logical_cores']} logical cores"
    if i.get("usable_cores") not in (None, i["logical_cores"]):
        cores += f", {i['usable_cores']} usable"
    blas = " ".join(str(x) for x in (i.get("blas"), i.get("mkl")) if x) or "unknown"
    cpu = ", ".join(x for x in (i.get("cpu_id"), i["arch"], cores) if x)
    line = (f"Machine: {i['cpu_model']} ({cpu}), torch {i['torch']} on {i['torch_threads']} "
            f"thread{'s' if i['torch_threads'] != 1 else ''}, {i['cpu_capability']} kernels, BLAS {blas}, "
            f"oneDNN {i.get('onednn') or 'unknown'}")
    if i.get("gpu"):
        line += f", GPU {i['gpu']}"
    return line


def source_commit(repo: Path | None = None) -> str | None:
    """Short commit of the checkout this package runs from, ``+dirty`` when tracked files differ; None outside git."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance_line(info: dict | None = None) -> str:
    """What a benchmark prints first: ``Commit 1a2b3c4 · Machine: ...``."""
    return f"Commit {source_commit() or 'unknown (not a git checkout)'} · {machine_line(info)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlrouting.machine",
                                description="Print the CPU model, cores, torch threads and kernel libraries.")
    p.add_argument("--json", action="store_true", help="the full record as JSON")
    args = p.parse_args(argv)
    print(json.dumps(machine_info(), indent=2) if args.json else machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
