"""A newcomer's first hour with the CLI: output that fits a terminal without dropping a digit,
messages in flags, typed errors for bad files and URIs, and a demo that says what it does."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cell, cli, main
from ecanalytics.demo import run_demo

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
UNTIL = datetime(2026, 11, 28, 12, tzinfo=UTC)


def on_pty(args: list[str], columns: int, cwd: Path) -> str:
    """The CLI's stdout on a pseudo-terminal ``columns`` wide, colour codes removed."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "ecanalytics.cli", *args], stdout=follower, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return ANSI.sub("", b"".join(chunks).decode().replace("\r\n", "\n"))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo root plus amounts with many digits, consolidated."""
    folder = tmp_path_factory.mktemp("fits")
    with ec.connect(str(folder / "ec-data")) as db:
        run_demo(db, records=12, transactions=300, seed=3, until=UNTIL)
        wallets = db.resources["wallets"]
        assert isinstance(wallets, ec.Resource)
        wallets.add("wallet-0001", "balance", 81942.37, timestamp=UNTIL)
        wallets.add("wallet-0002", "balance", 1234567.125, timestamp=UNTIL)
        db.consolidate()
    return folder


def fits(text: str, columns: int) -> None:
    assert "…" not in text and "..." not in text
    too_wide = [line for line in text.splitlines() if len(line) > columns]
    assert not too_wide, too_wide


@pytest.mark.parametrize("columns", [80, 100])
def test_sql_run_never_drops_a_digit(demo_root: Path, columns: int) -> None:
    with ec.connect(str(demo_root / "ec-data"), create=False) as db:
        expected = ec.reports.run(db, "daily_totals", start="2026-11-01")
    totals = expected.filter(pl.col("field") == "balance")["totalValue"].to_list()
    assert expected.height >= 8 and max(totals) > 1_234_567 and any(v != round(v) for v in totals)  # long, with decimals
    text = on_pty(["sql", "run", "daily_totals", "-p", "start=2026-11-01"], columns, demo_root)
    fits(text, columns)
    for row in expected.iter_rows(named=True):
        for value in row.values():
            assert cell(value) in text, (cell(value), text)


@pytest.mark.parametrize("columns", [80, 100])
def test_inspect_is_one_block_per_field(demo_root: Path, columns: int) -> None:
    text = on_pty(["inspect"], columns, demo_root)
    fits(text, columns)
    with ec.connect(str(demo_root / "ec-data"), create=False) as db:
        wallets = db.resources["wallets"]
        assert isinstance(wallets, ec.Resource)
        records = wallets.to_polars().height
        health = wallets.plugin("balance").inspect()
    blocks = text.split("\n\n")
    balance = next(b for b in blocks if b.startswith("wallets.balance"))
    lines = dict(line.split(None, 1) for line in balance.splitlines()[1:])
    assert lines["records"] == f"{records:,}" and lines["pending"] == str(health["pending"]) == "0"
    assert lines["reducer"] == "default" and lines["timezone"] == "America/Sao_Paulo"
    assert any(b.startswith("wallets.points") for b in blocks)


@pytest.mark.parametrize("columns", [80, 100])
def test_demo_tables_fit(tmp_path: Path, columns: int) -> None:
    text = on_pty(["demo", "--records", "6", "--transactions", "60"], columns, tmp_path)
    fits(text, columns)
    assert "Wallets (top 10 by balance)" in text and text.rstrip().endswith("s).")
    with ec.connect(str(tmp_path / "ec-data"), create=False) as db:
        wallets = db.resources["wallets"]
        assert isinstance(wallets, ec.Resource)
        for row in wallets.to_polars().iter_rows(named=True):
            assert row["id"] in text and cell(row["balance"]) in text


def test_demo_appends_to_its_own_root_and_refuses_others(tmp_path: Path) -> None:
    root = str(tmp_path / "ec-data")
    args = ["demo", "--root", root, "--records", "4", "--transactions", "40", "--output", "json"]
    first = json.loads(CliRunner().invoke(cli, args).output)
    balance = sum(c["transactionCount"] for c in first["cohorts"])
    assert 0 < balance < 40
    again = CliRunner().invoke(cli, args[:-2])
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert said.startswith(f"file://{root} holds an earlier demo: appending more traffic to its wallets")
    assert f"Appended 40 transactions to file://{root} (after {balance} balance transactions of earlier demos)" in said
    with ec.connect(root, create=False) as db:
        balance = db.resources["wallets_transactions_balance"].to_polars().height
    third = json.loads(CliRunner().invoke(cli, args).output)
    assert (first["appended"], first["earlier"], third["appended"], third["earlier"]) == (False, 0, True, balance)
    # A quickstart's wallets (other attributes) in the same folder: refused before anything is written.
    other = str(tmp_path / "quickstart")
    with ec.connect(other) as db:
        db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    res = CliRunner().invoke(cli, ["demo", "--root", other])
    assert res.exit_code == 1 and isinstance(res.exception, ec.ResourceExistsError)
    assert "not a demo root" in str(res.exception) and "--root" in str(res.exception)
    with ec.connect(other, create=False) as db:
        assert db.resources["wallets"].plugins == {} and not db.resources["wallets"].to_polars().height  # type: ignore[union-attr]
    # A folder of someone's files (no ecanalytics data at all): refused, nothing written there.
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["demo", "--root", str(home)])
    assert res.exit_code == 1 and isinstance(res.exception, ec.ResourceExistsError)
    assert "it holds projects, notes.txt, and no ecanalytics data" in str(res.exception)
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt", "projects"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(cli, ["demo", "--root", str(empty), "--records", "4", "--transactions", "40"]).exit_code == 0


def wallets_of(db: ec.Database) -> ec.Resource:
    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    return wallets


@pytest.fixture
def two_fields(tmp_path: Path) -> str:
    root = str(tmp_path / "ec-data")
    with ec.connect(root) as db:
        for field in ("balance", "points"):
            db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field=field, auto_consolidate=False))
        db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    return root


def test_messages_speak_in_flags(two_fields: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recalculate", "--root", two_fields, "--resource", "wallets"]) == 2
    err = capsys.readouterr().err
    assert "choose one with --field, e.g. --field balance" in err and "wallets.add(" not in err
    assert main(["recalculate", "--root", str(tmp_path / "typo"), "--resource", "wallets"]) == 1
    err = capsys.readouterr().err
    assert "Check --root (or EC_ROOT)" in err and "create=True" not in err and err.count("\n") == 1
    assert main(["inspect", "--root", "s3:/bucket/demo"]) == 1
    err = capsys.readouterr().err
    assert "Did you mean 's3://bucket/demo'?" in err and "IndexError" not in err and err.count("\n") == 1
    assert main(["inspect", "--root", "s3:/bucket/demo", "--output", "json"]) == 1
    failure = json.loads(capsys.readouterr().out)
    assert (failure["exitCode"], failure["type"]) == (1, "InvalidUriError") and "s3://bucket/demo" in failure["error"]
    with pytest.raises(ec.InvalidUriError, match="two slashes"):
        ec.connect("s3:/bucket/demo")


@pytest.mark.parametrize("spec", ["local:0", "local:-1", "local:many"])
def test_dask_local_needs_a_worker(two_fields: str, spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    with ec.connect(two_fields, create=False) as db:
        wallets_of(db).add("w1", "balance", 5)
    assert main(["consolidate", "--root", two_fields, "--dask", spec]) == 2  # at once: no cluster is started
    assert "local:N" in capsys.readouterr().err
    with ec.connect(two_fields, create=False) as db:
        assert wallets_of(db).plugin("balance").pending().height == 1


@pytest.mark.parametrize(("name", "content", "where"), [
    ("values.csv", "originalId,value\nw1,5\nw2,abc\nw3,7\n", "line 3 (row 1): value 'abc' is not a number"),
    ("ragged.csv", "originalId,value\nw1,5\nw2,6,7\n", "line 3 (row 1): 3 fields where the header has 2"),
    ("values.ndjson", '{"originalId": "w1", "value": 5}\n{"originalId": "w2", "value": "abc"}\n',
     "line 2 (row 1): value 'abc' is not a number"),
    ("broken.ndjson", '{"originalId": "w1", "value": 5}\n{"originalId": "w2" "value": 1}\n', "line 2 (row 1): not JSON"),
    ("broken.parquet", "not parquet at all", "is not a readable Parquet file"),
    ("nan.csv", "originalId,value\nw1,1\nw2,nan\n", "the first is row 1"),
])
def test_a_malformed_file_is_a_typed_row_numbered_error(two_fields: str, tmp_path: Path, name: str, content: str,
                                                       where: str, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / name
    good.write_text("originalId,value\nw1,10\n")
    bad.write_text(content)
    args = ["ingest", "--root", two_fields, "--resource", "wallets", "--field", "balance", str(good), str(bad)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{bad} {where}" in err or (f"{bad}" in err and where in err), err
    assert err.count("No file was written") == 1 and "Nothing was written" not in err and err.count("\n") == 1
    res = CliRunner().invoke(cli, args)
    assert isinstance(res.exception, ec.ValidationError)
    with ec.connect(two_fields, create=False) as db:
        assert wallets_of(db).plugin("balance").pending().height == 0


def test_help_texts_read_as_plain_text() -> None:
    runner = CliRunner()
    group = runner.invoke(cli, ["sql", "--help"]).output
    assert "run    Run a report by name (see sql list)." in group and "e.g.\n" not in group
    for command in (["--help"], ["sql", "shell", "--help"], ["sql", "run", "--help"], ["consolidate", "--help"],
                    ["ddl", "--help"], ["demo", "--help"], ["ingest", "--help"]):
        text = runner.invoke(cli, command).output
        assert "``" not in text and "..." not in text.replace("COMMAND [ARGS]...", "").replace("PATHS...", ""), text


def test_summaries_use_plurals_and_thousands(two_fields: str) -> None:
    with ec.connect(two_fields, create=False) as db:
        wallets = db.resources["wallets"]
        assert isinstance(wallets, ec.Resource)
        wallets.write_transactions(pl.DataFrame({"originalId": [f"w{i % 7}" for i in range(1500)], "value": [1.0] * 1500}),
                                   "balance")
        wallets.add("w1", "points", 3)
    res = CliRunner().invoke(cli, ["consolidate", "--root", two_fields, "--field", "points"])
    assert res.output.startswith("Applied 1 transaction to 1 record in 1 commit over 1 field ("), res.output
    res = CliRunner().invoke(cli, ["consolidate", "--root", two_fields])
    assert res.output.startswith("Applied 1,500 transactions to 7 records in 1 commit over 2 fields ("), res.output
    res = CliRunner().invoke(cli, ["recalculate", "--root", two_fields, "--resource", "wallets", "--field", "balance"])
    assert "changed none, nothing committed" in res.output and "None" not in res.output, res.output
