"""The API reference builds from the docstrings (pdoc), and the changelog keeps its format."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_api_reference_builds(tmp_path: Path) -> None:
    pytest.importorskip("pdoc")
    out = subprocess.run([sys.executable, "-m", "pdoc", "ecanalytics", "-o", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for page in ("index.html", "ecanalytics.html", "ecanalytics/reports.html", "search.js"):
        assert (tmp_path / page).is_file(), page
    api = (tmp_path / "ecanalytics.html").read_text()
    for name in ("connect", "Database.create_resource", "Resource.add_attribute", "EventualConsistencyPlugin.inspect",
                 "CredentialsError", "SchemaEvolutionError"):
        assert f'id="{name}"' in api, name
    assert "storage_options" in api  # connect's documented arguments are there


def test_changelog_keeps_a_changelog_format() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert versions[0] == "Unreleased" and "0.1.0" in versions
    for heading in re.findall(r"^### (.+)$", text, flags=re.M):
        assert heading in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, heading
    for version in versions:
        assert f"[{version}]: " in text  # every version has its link
