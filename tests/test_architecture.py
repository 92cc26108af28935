"""The layers hold: storage -> ledger -> consolidation -> maintenance/analytics -> plugin -> API
-> CLI (the import-linter contract in pyproject.toml, type-only imports included), no layer uses
another's private members (ruff's SLF001, each exception with its reason), and ``import
ecanalytics`` stays cheap."""

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


def test_type_only_imports_follow_the_layers_too() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert "exclude_type_checking_imports = false" in text


def test_no_private_member_is_used_across_modules_without_a_reason() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    out = subprocess.run([str(ruff), "check", "--select", "SLF001", "--output-format", "concise", "ecanalytics"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every exception carries its reason on the line or the line above.
    for path in (ROOT / "ecanalytics").rglob("*.py"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "noqa: SLF001" in line:
                reason = line.split("noqa: SLF001", 1)[1].strip(" -") or lines[i - 1].strip()
                assert reason and (reason.startswith("#") or "noqa" not in reason), f"{path}:{i + 1} gives no reason"


def test_import_does_not_load_duckdb_or_dask() -> None:
    code = "import sys, ecanalytics; print(sorted(m for m in ('duckdb', 'dask', 'distributed', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
