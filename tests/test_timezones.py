"""Cohorts follow each transaction's own instant in the configured IANA zone, DST-correct, and do
not depend on the host's TZ."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import ecanalytics as ec
from tests.conftest import Root

# Instants around DST changes: (zone, UTC instant)
CASES = [
    ("America/New_York", datetime(2026, 3, 8, 6, 59, tzinfo=timezone.utc)),   # 01:59 EST, Mar 8
    ("America/New_York", datetime(2026, 3, 8, 7, 0, tzinfo=timezone.utc)),    # 03:00 EDT
    ("America/New_York", datetime(2026, 11, 1, 4, 30, tzinfo=timezone.utc)),  # 00:30 EDT, Nov 1
    ("America/New_York", datetime(2026, 11, 2, 4, 30, tzinfo=timezone.utc)),  # 23:30 EST, Nov 1
    ("Europe/Berlin", datetime(2026, 3, 28, 23, 30, tzinfo=timezone.utc)),    # 00:30 CET Mar 29
    ("Europe/Berlin", datetime(2026, 10, 24, 22, 30, tzinfo=timezone.utc)),   # 00:30 CEST Oct 25
    ("Australia/Sydney", datetime(2026, 4, 4, 13, 30, tzinfo=timezone.utc)),  # 00:30 AEDT Apr 5
    ("Australia/Sydney", datetime(2026, 4, 5, 13, 30, tzinfo=timezone.utc)),  # 23:30 AEST Apr 5
    ("America/Sao_Paulo", datetime(2026, 12, 1, 2, 59, tzinfo=timezone.utc)), # 23:59 Nov 30
    ("Asia/Tokyo", datetime(2026, 12, 31, 15, 0, tzinfo=timezone.utc)),       # 00:00 Jan 1 2027
]


@pytest.mark.parametrize(("zone", "instant"), CASES, ids=[f"{z}-{i:%m%d%H%M}" for z, i in CASES])
def test_cohort_matches_zoneinfo(root: Root, zone: str, instant: datetime) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="r", field="n", cohort={"timezone": zone}, auto_consolidate=False))
    r = db.create_resource("r", {"id": "string|required", "n": "number|default:0"})
    r.add("x", 1, timestamp=instant)
    local = instant.astimezone(ZoneInfo(zone))
    expected_day = local.date()
    got = db.resources["r_transactions_n"].query({"cohortDate": expected_day.isoformat()})  # type: ignore[union-attr]
    assert got.height == 1
    assert got["cohortMonth"][0] == f"{local:%Y-%m}"
    assert got["timestamp"][0] == instant
    keys = root.store().find("r_transactions_n", ".parquet")
    assert [f"cohortMonth={local:%Y-%m}/cohortDate={expected_day}" in k for k in keys] == [True]


def test_a_day_of_hourly_writes_across_a_dst_change(root: Root) -> None:
    zone = "America/New_York"
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="r", field="n", cohort={"timezone": zone},
                                               batch_transactions=True, batch_size=1000, auto_consolidate=False))
    r = db.create_resource("r", {"id": "string|required", "n": "number|default:0"})
    start = datetime(2026, 11, 1, 0, tzinfo=timezone.utc)
    instants = [start + timedelta(hours=h) for h in range(48)]
    for t in instants:
        r.add("x", 1, timestamp=t)
    db.flush()
    expected: dict[str, int] = {}
    for t in instants:
        day = t.astimezone(ZoneInfo(zone)).date().isoformat()
        expected[day] = expected.get(day, 0) + 1
    txs = db.resources["r_transactions_n"].to_polars()  # type: ignore[union-attr]
    counts = {str(d): n for d, n in txs.group_by("cohortDate").len().iter_rows()}
    assert counts == expected
    assert expected["2026-11-01"] == 25  # the day with the repeated hour gets 25 hourly writes


def test_host_tz_does_not_change_cohorts(tmp_path: os.PathLike[str]) -> None:
    script = (
        "import ecanalytics as ec, sys\n"
        "from datetime import datetime, timezone\n"
        "db = ec.connect(sys.argv[1])\n"
        "db.use_plugin(ec.EventualConsistencyPlugin(resource='r', field='n', auto_consolidate=False,"
        " cohort={'timezone': 'Asia/Tokyo'}))\n"
        "r = db.create_resource('r', {'id': 'string|required', 'n': 'number|default:0'})\n"
        "r.add('x', 1, timestamp=datetime(2026, 6, 30, 16, 30, tzinfo=timezone.utc))\n"
        "print(db.resources['r_transactions_n'].to_polars()['cohortDate'][0])\n"
    )
    outputs = set()
    for i, tz in enumerate(["UTC", "America/Los_Angeles", "Pacific/Kiritimati"]):
        env = {**os.environ, "TZ": tz}
        out = subprocess.run([sys.executable, "-c", script, f"{tmp_path}/db{i}"], env=env,
                             capture_output=True, text=True, check=True, timeout=120)
        outputs.add(out.stdout.strip())
    assert outputs == {"2026-07-01"}  # 01:30 on Jul 1 in Tokyo, whatever the host zone
