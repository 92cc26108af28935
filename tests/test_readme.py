"""Every ```python block of the README and of docs/ runs, in order, in a fresh folder.

Blocks of one page share a namespace, as in a Python session. A block with an
``if __name__ == "__main__":`` guard runs as a script of its own (Dask's worker processes import
the script again, which is what the guard is for). S3 blocks run against the moto server, with
the bucket they name. A block may be skipped only with a ``<!-- skip: reason -->`` comment right
before it, for what cannot run here (a remote scheduler, a Kubernetes cluster).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*skip:\s*(?P<skip>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)
BUCKETS = ("my-bucket",)  # the buckets the S3 examples name


def blocks(page: Path) -> list[tuple[str | None, str]]:
    return [(m.group("skip"), m.group("code")) for m in BLOCK.finditer(page.read_text())]


def test_every_page_has_its_blocks_found() -> None:
    counts = {page.name: len(blocks(page)) for page in PAGES}
    assert counts["README.md"] == 5 and counts["analytics.md"] == 4, counts
    skipped = [skip for page in PAGES for skip, _ in blocks(page) if skip is not None]
    assert all(len(reason) > 10 for reason in skipped) and len(skipped) == 2, skipped


@pytest.mark.s3
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_blocks_run(page: Path, s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__doc__"}
    ran = 0
    for number, (skip, code) in enumerate(blocks(page), start=1):
        if skip is not None:
            continue
        if 'if __name__ == "__main__":' in code:
            script = tmp_path / f"block{number}.py"
            script.write_text(code)
            out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                                 cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert out.returncode == 0, f"{page.name} block {number}:\n{out.stderr}"
            assert "ConsolidationResult(" in out.stdout, out.stdout
        else:
            try:
                exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{page.name} block {number} failed: {exc!r}\n{code}") from exc
        ran += 1
    database = namespace.get("db")
    if database is not None:
        database.close()  # type: ignore[attr-defined]
    assert ran == len([b for b in blocks(page) if b[0] is None])


def test_readme_is_a_users_guide() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 300
    assert "pip install -e . && ecanalytics demo" in text and 'pip install -e ".[dev]" && pytest' in text
    assert "tests/" not in text and "test_" not in text  # no test file names
    for page in PAGES:
        prose = page.read_text().lower()
        assert "this round" not in prose and "previous round" not in prose, page.name
    for doc in ("guarantees", "architecture", "benchmarks"):
        assert re.search(r"20\d\d-\d\d-\d\d", (ROOT / "docs" / f"{doc}.md").read_text()), doc  # dated
    assert "python bench/consolidate.py" in (ROOT / "docs" / "benchmarks.md").read_text()  # how to reproduce
    assert 'pip install -e ".[notebook]"' in text
