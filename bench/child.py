"""One fresh engine per configuration: a benchmark runs itself again as a child process (its own
`--worker` mode), which prints its measurement as one `RESULT <json>` line on stdout (vLLM's
own output goes to stderr). The two halves of that protocol live here."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

PREFIX = "RESULT "


def emit(result: Any) -> None:
    """The child's side: hand `result` to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run(module: str, args: list[str], env: dict[str, str] | None = None) -> tuple[Any | None, str]:
    """The parent's side: run `python -m module args`; (its result, or None if it failed or sent
    none; its stderr)."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        return None, proc.stderr
    return json.loads(lines[-1][len(PREFIX):]), proc.stderr
