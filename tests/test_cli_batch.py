"""The CLI as a batch job: --version, --log-level anywhere, JSON Lines (also on failure),
consolidate --watch (timestamps, quiet idle runs, heartbeats), progress bars of objects and rows,
recalculate --limit, the sql shell in scripts, gc --retain units, and ddl."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner
from rich.console import Console

import ecanalytics as ec
from ecanalytics import cli as cli_module
from ecanalytics.cli import ObjectProgress, cli, main
from ecanalytics.resource import parse_days

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z ")
OLD = datetime.now(UTC) - timedelta(days=60)


def seed(folder: Path, *, old: bool = False) -> ec.Database:
    """Two managed fields; 6 + 1 transaction objects pending (a day 60 days ago with ``old``)."""
    db = ec.connect(str(folder))
    for f in ("balance", "points"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field=f, auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    for i in range(6):
        w.add(f"w{i % 3}", "balance", i + 1, timestamp=OLD + timedelta(minutes=i) if old else None)
    w.add("w0", "points", 5, timestamp=OLD if old else None)
    return db


def lines(text: str) -> list[dict[str, Any]]:
    """Parse JSON Lines: every non-empty line must be one JSON object."""
    parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(p, dict) for p in parsed), text
    return parsed


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ecanalytics.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd, input=stdin)


def test_version_and_log_level_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"ecanalytics {ec.__version__}"
    seed(tmp_path / "r").close()
    root = str(tmp_path / "r")
    assert main(["inspect", "--root", root, "--log-level", "error"]) == 0
    assert main(["--log-level", "info", "sql", "run", "pending_backlog", "--root", root, "--log-level", "error"]) == 0
    capsys.readouterr()
    assert main(["inspect", "--root", root, "--log-level", "loud"]) == 2
    assert "loud" in capsys.readouterr().err


def test_json_lines_log_also_on_failure(tmp_path: Path) -> None:
    """Every command appended to one file with ``>> ec.log 2>&1`` leaves valid JSON Lines."""
    seed(tmp_path / "r", old=True).close()
    root = str(tmp_path / "r")
    log = tmp_path / "ec.log"
    runs = [["inspect"], ["consolidate", "--log-level", "debug"], ["gc", "--retain", "30d"], ["compact"],
            ["recalculate", "--resource", "wallets", "--field", "balance"],
            ["consolidate", "--resource", "nope"], ["gc", "--retain", "4wd"]]
    codes = []
    for args in runs:
        with log.open("a") as f:
            codes.append(subprocess.run([sys.executable, "-m", "ecanalytics.cli", *args, "--root", root, "--output", "json"],
                                        stdout=f, stderr=subprocess.STDOUT, timeout=180).returncode)
    with log.open("a") as f:  # a usage error and a missing root, in JSON too
        codes.append(subprocess.run([sys.executable, "-m", "ecanalytics.cli", "compact", "--target-rows", "0", "--output", "json"],
                                    stdout=f, stderr=subprocess.STDOUT, timeout=180).returncode)
        codes.append(subprocess.run([sys.executable, "-m", "ecanalytics.cli", "inspect", "--root", str(tmp_path / "nope"),
                                     "--output=json"], stdout=f, stderr=subprocess.STDOUT, timeout=180).returncode)
    assert codes == [0, 0, 0, 0, 0, 1, 1, 2, 1]
    text = log.read_text()
    assert "\n  " not in text  # never indented
    records = lines(text)
    summaries = [r for r in records if "level" not in r]  # log records (debug run) are JSON objects too
    assert len(summaries) == len(runs) + 2
    assert all(re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", r["time"]) for r in summaries)
    assert summaries[1]["transactions"] == 7 and summaries[1]["exitCode"] == 0
    assert summaries[2]["retain"] == "30d" and summaries[2]["objects"] == 7
    errors = [r for r in summaries if "error" in r]
    assert [(e["type"], e["exitCode"]) for e in errors] == [
        ("UnknownResourceError", 1), ("InvalidValueError", 1), ("BadParameter", 2), ("RootNotFoundError", 1)]
    assert "'4wd'" in errors[1]["error"] and "4wdd" not in errors[1]["error"]  # echoes only what was typed


def test_sql_list_and_run_as_json_lines(tmp_path: Path) -> None:
    seed(tmp_path / "r").close()
    reports = lines(CliRunner().invoke(cli, ["sql", "list", "--output", "json"]).output)
    by_name = {r["name"]: r for r in reports}
    assert set(by_name) == set(ec.reports.names())
    assert {"name": "limit", "type": "INTEGER", "required": False, "default": "10"} in by_name["top_records"]["params"]
    res = CliRunner().invoke(cli, ["sql", "run", "pending_backlog", "--root", str(tmp_path / "r"), "--output", "json"])
    rows = lines(res.output)
    assert [(r["field"], r["pending"]) for r in rows] == [("balance", 6), ("points", 1)]
    assert all(0 <= r["ageSeconds"] < 600 for r in rows)


class FakeTime:
    """The watch loop's clock and sleep: every sleep advances the clock; ``hooks`` run on a given sleep."""

    def __init__(self, hooks: dict[int, Any]) -> None:
        self.now, self.sleeps, self.hooks = 0.0, 0, hooks

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.sleeps in self.hooks:
            self.hooks[self.sleeps]()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_watch_is_quiet_when_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    db = seed(tmp_path / "r")
    w = db.resources["wallets"]
    assert isinstance(w, ec.Resource)
    fake = FakeTime({5: lambda: w.add("w9", "balance", 1)})  # new work during the 5th sleep
    monkeypatch.setattr(cli_module, "_clock", fake.clock)
    monkeypatch.setattr(cli_module, "_sleep", fake.sleep)
    res = CliRunner().invoke(cli, ["consolidate", "--root", str(tmp_path / "r"), "--watch", "--interval", "60",
                                   "--heartbeat", "10", "--max-runs", "25", "--output", fmt])
    assert res.exit_code == 0, res.output
    assert fake.sleeps == 24
    out = res.output.splitlines()
    # Run 1 (7 applied), run 6 (the new one), run 16 (a heartbeat 10 minutes after run 6); 22 idle runs print nothing.
    assert len(out) == 3, out
    if fmt == "text":
        assert all(STAMP.match(line) for line in out), out
        assert "Applied 7 transactions" in out[0] and "Applied 1 transaction to 1 record in 1 commit" in out[1]
        assert "Idle" in out[2] and "9 quiet runs" in out[2]
        return
    runs = lines(res.output)
    assert [(r["run"], r["idle"], r["transactions"], r["quietRuns"]) for r in runs] == [
        (1, False, 7, 0), (6, False, 1, 4), (16, True, 0, 9)]
    assert all(re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", r["time"]) for r in runs)
    db.close()


def test_heartbeat_zero_prints_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(tmp_path / "r").close()
    fake = FakeTime({})
    monkeypatch.setattr(cli_module, "_clock", fake.clock)
    monkeypatch.setattr(cli_module, "_sleep", fake.sleep)
    res = CliRunner().invoke(cli, ["consolidate", "--root", str(tmp_path / "r"), "--watch", "--heartbeat", "0",
                                   "--max-runs", "3", "--output", "json"])
    assert [r["run"] for r in lines(res.output)] == [1, 2, 3]


def bar_console(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buffer = io.StringIO()
    monkeypatch.setattr(cli_module, "_tty", lambda: True)
    monkeypatch.setattr(cli_module, "_progress_console",
                        lambda: Console(file=buffer, force_terminal=True, width=160, color_system=None))
    return buffer


def test_progress_bars_count_objects_and_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = seed(tmp_path / "r", old=True)
    store = db.store
    plugin = db.resources["wallets"].plugin("balance")  # type: ignore[union-attr]
    with ObjectProgress(store, "x", enabled=False) as quiet:
        plugin.consolidate()
    assert (quiet.objects, quiet.rows) == (0, 0) and store.on_read is None  # nothing listens when disabled
    with ObjectProgress(store, "x", total=1, enabled=True) as counted:
        db.resources["wallets"].plugin("points").consolidate()  # type: ignore[union-attr]
    assert (counted.objects, counted.rows) == (1, 1) and store.on_read is None
    db.resources["wallets"].add("w1", "balance", 2)  # type: ignore[union-attr]
    db.resources["wallets"].add("w2", "balance", 3)  # type: ignore[union-attr]
    root = str(tmp_path / "r")
    for args, label in ((["consolidate"], "consolidating"), (["recalculate", "--resource", "wallets", "--field", "balance"], "recalculating"),
                        (["compact"], "compacting"), (["gc", "--retain", "30d"], "archiving")):
        buffer = bar_console(monkeypatch)
        res = CliRunner().invoke(cli, [*args, "--root", root])
        assert res.exit_code == 0, res.output
        drawn = buffer.getvalue()
        assert label in drawn and "objects" in drawn and " rows" in drawn, (args, drawn)
        if args == ["consolidate"]:
            assert "2/2 objects" in drawn and "2 rows" in drawn, drawn  # objects and rows, not 2 fields
        if args[0] == "recalculate":
            assert "8/?" in drawn and "8 rows" in drawn, drawn  # 6 + 2 balance objects of 1 row each
    buffer = bar_console(monkeypatch)
    monkeypatch.setattr(cli_module, "_tty", lambda: False)  # not a terminal: no bar
    assert CliRunner().invoke(cli, ["consolidate", "--root", root]).exit_code == 0
    assert buffer.getvalue() == ""
    db.close()


def test_recalculate_prints_a_summary_and_at_most_limit_rows(tmp_path: Path) -> None:
    from ecanalytics.ledger import Commit

    db = ec.connect(str(tmp_path / "r"))
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    for i in range(12):
        w.add(f"w{i:02d}", 10 + i)
    db.consolidate()
    w.ledger.commit(lambda st: Commit("update", upserts=st.records.with_columns(balance=pl.lit(0.0))))
    root = str(tmp_path / "r")
    res = CliRunner().invoke(cli, ["recalculate", "--root", root, "--resource", "wallets", "--limit", "3", "--output", "json"])
    (summary,) = lines(res.output)
    assert (summary["changed"], len(summary["changedRecords"]), summary["more"]) == (12, 3, 9)
    w.ledger.commit(lambda st: Commit("update", upserts=st.records.with_columns(balance=pl.lit(0.0))))
    res = CliRunner().invoke(cli, ["recalculate", "--root", root, "--resource", "wallets", "--limit", "3"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Checked 12 records") and "changed 12" in res.output
    assert "w02" in res.output and "w03" not in res.output
    assert res.output.rstrip().endswith("and 9 more (--limit 12 shows them all)")
    db.close()


def test_sql_shell_scripts(tmp_path: Path) -> None:
    seed(tmp_path / "r").close()
    root = str(tmp_path / "r")
    ok = CliRunner().invoke(cli, ["sql", "shell", "--root", root], input="SELECT 41 AS a;\n\nSELECT 42 AS last_one")
    assert ok.exit_code == 0 and "41" in ok.output and "42" in ok.output  # the last statement needs no ';'
    bad = CliRunner().invoke(cli, ["sql", "shell", "--root", root], input="SELECT 1 AS first;\nSELECT nope;\nSELECT 99 AS never;\n")
    assert bad.exit_code == 1 and "first" in bad.output and "never" not in bad.output
    assert "nope" in bad.stderr
    tail = CliRunner().invoke(cli, ["sql", "shell", "--root", root], input="SELECT 1;\nSELECT nope")
    assert tail.exit_code == 1
    out = run_cli("sql", "shell", "--root", root, stdin=".tables\n")  # a real pipe, as in a script
    assert out.returncode == 0, out.stderr
    for name in ("ec_pending", "ec_bases", "ec_transactions", "ec_values", "ec_fields", "wallets",
                 "wallets_transactions_balance"):
        assert re.search(rf"\b{name}\b", out.stdout), name
    for internal in ("ec_hidden_objects", "ec_compaction_tokens", "ec_pending_objects"):
        assert internal not in out.stdout


def test_gc_retain_units(tmp_path: Path) -> None:
    assert [parse_days(v) for v in ("30d", "4w", "12h", "24h", "25h", "1h", 7)] == [30, 28, 1, 1, 2, 1, 7]
    assert parse_days("30", bare_days=True) == 30
    for bad in ("0h", "30", "4wd", "w", "1.5d", "١d"):
        with pytest.raises(ec.InvalidValueError, match=re.escape(repr(bad))):
            parse_days(bad)
    seed(tmp_path / "r", old=True).close()
    root = str(tmp_path / "r")
    res = CliRunner().invoke(cli, ["gc", "--root", root, "--retain", "4w"])
    assert res.exit_code == 0 and "older than 4w over 2 fields" in res.output and "28" not in res.output.split("(")[0]
    res = CliRunner().invoke(cli, ["gc", "--root", root, "--retain", "12h", "--output", "json"])
    assert lines(res.output)[0]["retain"] == "12h"


def test_ddl_duckdb_reads_the_root(tmp_path: Path) -> None:
    """The DuckDB DDL, executed for real by a bare DuckDB, sees what ecanalytics sees."""
    db = seed(tmp_path / "r")
    db.consolidate()
    db.resources["wallets"].add("w1", "balance", 100)  # type: ignore[union-attr]  # one pending
    root = str(tmp_path / "r")
    res = CliRunner().invoke(cli, ["ddl", "--root", root, "--engine", "duckdb"])
    assert res.exit_code == 0, res.output
    assert "-- wallets: no snapshot yet" in res.output  # the records view needs an export first
    res = CliRunner().invoke(cli, ["ddl", "--root", root, "--engine", "duckdb", "--export"])
    con = duckdb.connect()
    con.execute(res.output)
    assert con.sql('SELECT count(*), sum(value) FROM "wallets_transactions_balance"').fetchall() == [(7, 121.0)]
    assert con.sql('SELECT DISTINCT typeof("cohortDate") FROM "wallets_transactions_balance"').fetchall() == [("DATE",)]
    ours = db.sql("SELECT id, value, cohortDate FROM wallets_transactions_balance ORDER BY id").fetchall()
    theirs = con.sql('SELECT id, value, "cohortDate" FROM "wallets_transactions_balance" ORDER BY id').fetchall()
    assert ours == theirs
    records = con.sql('SELECT * FROM "wallets" ORDER BY id').pl()
    assert records.equals(db.resources["wallets"].to_polars())  # type: ignore[union-attr]
    db.close()


@pytest.mark.s3
def test_ddl_other_engines_follow_their_documented_syntax(tmp_path: Path, s3_root: Any) -> None:
    db = s3_root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="accounts", field="balance", auto_consolidate=False))
    a = db.create_resource("accounts", {"id": "string|required", "balance": "decimal(18,2)|default:0",
                                        "tier": "integer|optional", "vip": "boolean|default:false"})
    a.add("a1", 1.5, timestamp=datetime(2026, 3, 14, tzinfo=UTC))
    from ecanalytics import ddl

    bucket_prefix = s3_root.uri.removeprefix("s3://")
    dataset = "accounts_transactions_balance"
    athena = ddl.generate(db, "athena", schema="analytics")
    assert f"CREATE EXTERNAL TABLE IF NOT EXISTS `analytics`.`{dataset}` (" in athena
    assert "PARTITIONED BY (`cohortmonth` string, `cohortdate` string)" in athena and "STORED AS PARQUET" in athena
    assert "`value` decimal(18,2)" in athena and "`timestamp` timestamp" in athena and "`originalid` string" in athena
    assert f"LOCATION 's3://{bucket_prefix}/{dataset}/'" in athena
    for prop in ("'projection.enabled' = 'true'", "'projection.cohortmonth.type' = 'date'",
                 "'projection.cohortmonth.format' = 'yyyy-MM'", "'projection.cohortmonth.range' = '2026-03,NOW'",
                 "'projection.cohortmonth.interval.unit' = 'MONTHS'", "'projection.cohortdate.format' = 'yyyy-MM-dd'",
                 "'projection.cohortdate.range' = '2026-03-01,NOW'", "'projection.cohortdate.interval.unit' = 'DAYS'",
                 f"'storage.location.template' = 's3://{bucket_prefix}/{dataset}/cohortMonth=${{cohortmonth}}/cohortDate=${{cohortdate}}'"):
        assert prop in athena, prop
    assert "CREATE EXTERNAL TABLE IF NOT EXISTS `analytics`.`accounts` (" in athena
    assert "`tier` bigint" in athena and "`vip` boolean" in athena
    assert f"LOCATION 's3://{bucket_prefix}/_export/accounts/'" in athena
    spark = ddl.generate(db, "spark")
    assert f"CREATE TABLE IF NOT EXISTS `{dataset}` (" in spark and "USING PARQUET" in spark
    assert "PARTITIONED BY (`cohortMonth`, `cohortDate`)" in spark and "`value` DECIMAL(18,2)" in spark
    assert f"LOCATION 's3a://{bucket_prefix}/{dataset}'" in spark and f"MSCK REPAIR TABLE `{dataset}`;" in spark
    trino = ddl.generate(db, "trino", schema="web")
    assert f'CREATE TABLE IF NOT EXISTS "web"."{dataset}" (' in trino and "format = 'PARQUET'" in trino
    assert f"external_location = 's3://{bucket_prefix}/{dataset}'" in trino
    assert "partitioned_by = ARRAY['cohortmonth', 'cohortdate']" in trino
    assert '"cohortmonth" varchar,\n  "cohortdate" varchar\n)' in trino  # partition columns last, as Hive requires
    assert (f"CALL system.sync_partition_metadata(schema_name => 'web', table_name => '{dataset}', mode => 'ADD', "
            "case_sensitive => false);") in trino
    for text in (athena, spark, trino):
        assert "testing" not in text.replace("-- ", "")  # no credentials
    with ec.connect(str(tmp_path / "local")) as local:
        local.create_resource("things", {"id": "string|required"})
        with pytest.raises(ec.ConfigurationError, match="Athena reads S3 only"):
            ddl.generate(local, "athena")
        assert "LOCATION 'file://" in ddl.generate(local, "spark")
