"""The layering the code relies on, checked on every CI run.

Contracts live in pyproject.toml ([tool.importlinter]): policies are pure, the request plan is
pure, `check` needs no server parts, the plugin does not import the controller, no cycles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_check_command_imports_no_server_parts(policies_path):
    """`adaptive-controller check` validates a file on a machine without Redis or a web stack."""
    code = (
        "import sys; from controller.cli import main; rc = main(['check', sys.argv[1]]); "
        "bad = sorted({'fastapi', 'redis', 'hnswlib', 'uvicorn', 'httpx'} & set(sys.modules)); "
        "print('LOADED', bad); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(policies_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ": OK (" in out.stdout and "LOADED []" in out.stdout
