"""The notebooks are documentation: they run headless, what they show is checked here (not in
the notebooks), and their stored outputs are current.

``python -m tests.test_notebooks`` re-executes them and stores the outputs (do it after a change).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# Checks appended to each notebook's kernel after it ran: each recomputes what the notebook shows
# from the data independently.
CHECKS = {
    "quickstart": """
assert (result.transactions, result.duplicates, result.held, result.held_records) == (3, 1, 1, ("w2",))
assert late.late == 2 and late.held == 0
w1 = again.resources["wallets"]
assert w1.get("w1")["balance"] == 1000 + 250 - 100 + 3          # the add dated before the set has no effect
assert again.resources["wallets"].get("w2")["balance"] == 40     # the retry counted once
folded = []
events = [(t0, "set", 1000), (t0 + timedelta(days=2), "add", 250), (t0 + timedelta(days=5), "sub", 100),
          (t0 - timedelta(days=3), "add", 7), (t0 + timedelta(days=1), "add", 3)]
for day in days:
    value = 0.0
    for _ts, op, v in sorted(e for e in events if e[0] <= day):
        value = v if op == "set" else value + v if op == "add" else value - v
    folded.append(value)
assert history == folded, (history, folded)
assert txs.height == 6 and txs["id"].n_unique() == 6 and txs["applied"].all()  # payment-1's retry: one row
again.close()
""",
    "cohort-analysis": """
signed = pl.when(pl.col("operation") == "sub").then(-pl.col("value")).otherwise(pl.col("value"))
expected = (txs.group_by(pl.col("cohortDate").cast(pl.String).alias("cohort"))
            .agg(pl.len().alias("n"), signed.sum().alias("total")))
check = daily.join(expected, on="cohort", how="left")
assert check["transactionCount"].to_list() == check["n"].fill_null(0).to_list()
assert (check["totalValue"] - check["total"].fill_null(0)).abs().max() < 1e-6
by_month = txs.group_by("cohortMonth").len().sort("cohortMonth")
assert monthly["transactionCount"].to_list() == by_month["len"].to_list()
assert values.height == 40
rows = txs.filter(pl.col("originalId") == busiest).sort("timestamp", "id").rows(named=True)
for t, shown in zip(ends, series):
    value = 0.0
    for r in rows:
        if r["timestamp"] <= t:
            value = r["value"] if r["operation"] == "set" else value + (r["value"] if r["operation"] == "add" else -r["value"])
    assert shown == value, (t, shown, value)
assert backlog.filter(pl.col("field") == "balance")["pending"].to_list() == [7]
assert reconciliation.height == 0
""",
}

_VOLATILE = [
    (re.compile(r"\d+(\.\d+)? ms\b"), "<ms>"),
    (re.compile(r"(durationMs['\"]?[:=]?\s*(</td><td>)?)[\d.,]+"), r"\1<ms>"),
    (re.compile(r"/tmp/[\w./-]+"), "<tmp>"),
    (re.compile(r"0x[0-9a-f]+"), "<addr>"),
]


def _normal(text: str) -> str:
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text


def shown(book: Any) -> list[list[tuple[str, str]]]:
    """Per code cell, what a reader sees, with volatile parts (timings, temp paths) masked and
    images reduced to their kind."""
    out = []
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        items = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                items.append((o["name"], _normal(o["text"])))
            elif o["output_type"] in ("display_data", "execute_result"):
                data = o.get("data", {})
                items.append(("image", "png") if "image/png" in data else ("text", _normal(data.get("text/plain", ""))))
            else:
                items.append((o["output_type"], _normal(str(o.get("evalue", "")))))
        out.append(items)
    return out


def execute(path: Path, workdir: Path, *, checks: bool) -> Any:
    book = nbformat.read(path, as_version=4)
    if checks:
        book.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    if checks:
        book.cells.pop()
    return book


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_shows_the_right_things_and_is_current(path: Path, tmp_path: Path) -> None:
    stored = nbformat.read(path, as_version=4)
    book = execute(path, tmp_path, checks=True)  # raises CellExecutionError if a check fails
    got = shown(book)
    assert not [o for cell in got for o in cell if o[0] == "error"]
    assert sum(o == ("image", "png") for cell in got for o in cell) >= (1 if path.stem == "quickstart" else 4)
    assert got == shown(stored), f"the stored outputs of {path.name} are stale: run python -m tests.test_notebooks"


def test_notebooks_use_only_the_public_api() -> None:
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "ecanalytics.ledger" not in source and "Commit(" not in source and "._" not in source, path.name
        assert "assert " not in source, f"{path.name}: checks belong in tests/test_notebooks.py"


def refresh() -> None:
    """Execute every notebook and store its outputs."""
    import tempfile

    for path in NOTEBOOKS:
        with tempfile.TemporaryDirectory() as tmp:
            book = execute(path, Path(tmp), checks=False)
        nbformat.write(book, path)
        print("refreshed", path.name, file=sys.stderr)


if __name__ == "__main__":
    refresh()
