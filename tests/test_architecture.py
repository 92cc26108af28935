"""The layers hold: storage -> ledger -> consolidation -> maintenance/analytics -> API -> CLI
(the import-linter contract in pyproject.toml), and ``import ecanalytics`` stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_layer_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"  # the console script of import-linter
    out = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_import_does_not_load_duckdb_or_dask() -> None:
    code = "import sys, ecanalytics; print(sorted(m for m in ('duckdb', 'dask', 'distributed', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
