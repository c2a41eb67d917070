"""Facts about the machine a benchmark ran on, recorded beside every result (CPUs differ between
machines: some have AVX-512/bf16, some only AVX2; compare numbers only within one run)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

SIMD_PREFIXES = ("avx", "amx", "fma", "sse4", "f16c")


def cpu_flags() -> str:
    """The SIMD flags of this CPU (from /proc/cpuinfo), space-separated."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(SIMD_PREFIXES))
    except OSError:
        pass
    return ""


def describe() -> dict[str, object]:
    """CPU model, core count, SIMD flags, Python."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version()}


def command(module: str) -> str:
    """The command line behind a result as a user types it (not the interpreter's path to the script)."""
    return " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])
