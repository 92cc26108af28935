"""Every bad input gives a typed ``ec.EcError`` whose message says what to do, and writes nothing.

One test per item of the bad-input issue, then a deterministic fuzz (a seeded ``random.Random``)
over amounts, ids, names, time zones, timestamps, analytics dates, schema specs, connect options,
URIs and retention/compaction arguments, through the Python API and through the CLI. Storage
tests run on local disk, ``memory://`` and S3 (the ``root`` fixture); after every rejected input
the root's listing is unchanged, and at the end its bytes and the committed values are too.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from ecanalytics.cli import main
from ecanalytics.consolidation import Reducer
from ecanalytics.resource import parse_days
from ecanalytics.storage import StorageConfig
from tests.conftest import Root

SEED = 20260511
UTC = dt.UTC
SPEC = {
    "id": "string|required", "userId": "string", "balance": "number|default:0",
    "credit": "decimal(18,2)|default:0", "n": "integer", "note": "string", "currency": "string",
}
Case = tuple[str, Any]  # (a label unique within its category, the bad input)


# -- helpers ----------------------------------------------------------------------------------
_STORES: dict[str, Any] = {}


def _store(root: Root) -> Any:
    # One store per root: a new s3fs client per listing would cost more than the listing.
    if root.uri not in _STORES:
        _STORES.clear()
        _STORES[root.uri] = root.store()
    return _STORES[root.uri]


def listing(root: Root) -> list[str]:
    return sorted(_store(root).find(""))


def snapshot(root: Root) -> dict[str, bytes]:
    store = _store(root)
    return {k: store.read(k) for k in store.find("")}


def expect(error: type[ec.EcError], call: Callable[..., object]) -> ec.EcError:
    """``call`` raises ``error`` (an EcError) with a message of its own."""
    with pytest.raises(error) as info:
        call()
    exc = info.value
    assert isinstance(exc, ec.EcError), type(exc)
    message = str(exc)
    assert len(message) > 15 and "Traceback" not in message, message
    return exc


class Guard:
    """Checks that a root's listing stays the same around each rejected input."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.keys = listing(root)
        self.bytes = snapshot(root)
        self.checked = 0

    def reject(self, error: type[ec.EcError], call: Callable[..., object]) -> ec.EcError:
        exc = expect(error, call)
        assert listing(self.root) == self.keys, f"a rejected input wrote something: {exc}"
        self.checked += 1
        return exc

    def unchanged(self) -> None:
        assert snapshot(self.root) == self.bytes


@pytest.fixture
def db(root: Root) -> ec.Database:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               cohort={"timezone": "Pacific/Kiritimati"}))
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="credit", auto_consolidate=False))
    w = db.create_resource("wallets", SPEC)
    w.insert({"id": "w1", "userId": "u1", "balance": 5, "credit": Decimal("1.25"), "currency": "USD"})
    w.add("w1", "balance", 2, timestamp=dt.datetime(2026, 3, 1, 12, tzinfo=UTC))  # pending, so analytics see data
    return db


def wallets(db: ec.Database) -> ec.Resource:
    w = db.resources["wallets"]
    assert isinstance(w, ec.Resource)
    return w


def committed(db: ec.Database) -> list[dict[str, Any]]:
    return wallets(db).to_polars().to_dicts()


# -- one test per item of the issue -----------------------------------------------------------
@pytest.mark.parametrize("op", ["add", "sub", "set"])
def test_huge_int_and_snan_amounts(root: Root, db: ec.Database, op: str) -> None:
    w, guard, before = wallets(db), Guard(root), committed(db)
    for amount in (10**400, -(10**400), 10**5000, Decimal("sNaN"), Decimal("-sNaN")):
        guard.reject(ec.InvalidValueError, lambda a=amount: getattr(w, op)("w1", "balance", a))
        guard.reject(ec.InvalidValueError, lambda a=amount: getattr(w, op)("w1", "credit", a))
    guard.unchanged()
    assert committed(db) == before


def test_huge_int_in_insert(root: Root, db: ec.Database) -> None:
    w, guard = wallets(db), Guard(root)
    for record in ({"balance": 10**400}, {"balance": -(10**5000)}, {"n": 2**63}, {"n": -(2**63) - 1},
                   {"credit": 10**400}, {"note": "\ud800"}, {"balance": Decimal("sNaN")}):
        guard.reject(ec.SchemaError, lambda r=record: w.insert({"id": "w2", "currency": "USD", **r}))
    w.insert({"id": "w3", "n": 2**63 - 1, "balance": 1e308})  # the edges fit
    assert w.get("w3")["n"] == 2**63 - 1


@pytest.mark.parametrize("result", [10**400, -(10**400), 10**5000, Decimal("sNaN"), Decimal("NaN"), math.inf,
                                    Decimal("1e400"), "5", None, True, complex(1, 0)], ids=lambda v: _label(v)[:40])
def test_python_reducer_bad_result_is_a_consolidation_error(result: Any) -> None:
    ts = dt.datetime(2026, 1, 1, tzinfo=UTC)
    for dtype in (pl.Float64(), pl.Decimal(18, 2)):
        pending = pl.DataFrame(
            [{"id": "t1", "originalId": "w1", "field": "balance", "value": 1, "operation": "add", "timestamp": ts,
              "source": "api"}],
            schema={"id": pl.String, "originalId": pl.String, "field": pl.String, "value": dtype,
                    "operation": pl.String, "timestamp": pl.Datetime("us", "UTC"), "source": pl.String},
            orient="row")
        current = pl.DataFrame({"originalId": ["w1"], "current": [0]}, schema={"originalId": pl.String, "current": dtype})
        exc = expect(ec.ConsolidationError, lambda c=current, p=pending: Reducer(lambda txs: result)(p, c, 0))
        assert "w1" in str(exc) and getattr(exc, "record_id", "w1") == "w1"


def test_python_reducer_bad_result_never_reaches_a_value(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               reducer=lambda txs: 10**400))
    w = db.create_resource("wallets", SPEC)
    w.insert({"id": "w1", "balance": 5})
    w.add("w1", 1)
    try:
        result = w.plugin().consolidate()
    except ec.ConsolidationError as exc:
        assert "w1" in str(exc) and "finite" in str(exc)
    else:  # the record is held back with its rows (see Consolidator), never given a value
        assert "w1" in getattr(result, "held_records", ())
    assert w.get("w1")["balance"] == 5


def test_lone_surrogate_ids_and_names(root: Root, db: ec.Database) -> None:
    w, guard = wallets(db), Guard(root)
    for bad in ("\ud800", "w\udfff", "\udc80x"):
        guard.reject(ec.InvalidNameError, lambda b=bad: w.add(b, "balance", 1))
        guard.reject(ec.InvalidNameError, lambda b=bad: w.add("w1", "balance", 1, id=b))
        guard.reject(ec.InvalidNameError, lambda b=bad: w.insert({"id": b}))
        guard.reject(ec.InvalidNameError, lambda b=bad: db.create_resource(b, {"id": "string"}))
    guard.unchanged()


def test_year_one_at_plus_14_and_other_out_of_range_timestamps(root: Root, db: ec.Database) -> None:
    w, guard = wallets(db), Guard(root)
    for ts in (dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))), dt.datetime(1, 1, 1, tzinfo=UTC),
               dt.datetime(9999, 12, 31, 23, tzinfo=UTC), dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-14)))):
        exc = guard.reject(ec.InvalidValueError, lambda t=ts: w.add("w1", "balance", 1, timestamp=t))
        assert "0001-01-02 to 9999-12-30" in str(exc)
    w.add("w1", "balance", 1, timestamp=dt.datetime(1, 1, 2, tzinfo=UTC))  # the documented edges are accepted
    w.add("w1", "balance", 1, timestamp=dt.datetime(9999, 12, 30, 23, tzinfo=UTC))


def test_gc_and_last_n_bounds(root: Root, db: ec.Database) -> None:
    w, guard = wallets(db), Guard(root)
    guard.reject(ec.InvalidValueError, lambda: w.gc(10**30, field="balance"))
    guard.reject(ec.InvalidValueError, lambda: w.gc("36501d", field="balance"))
    guard.reject(ec.InvalidValueError, lambda: w.plugin("balance").get_last_n("hour", 10**9))
    guard.reject(ec.InvalidValueError, lambda: w.plugin("balance").get_last_n("day", 1_000_000))  # before year 1
    assert parse_days("36500d") == 36500


@pytest.mark.parametrize("bad", ["2024-13-45", "2026-13-01", "2026-02-30", "2026-12-01\n", "0000-01-01"])
def test_invalid_dates_in_analytics_and_reports(root: Root, db: ec.Database, bad: str) -> None:
    plugin, guard = wallets(db).plugin("balance"), Guard(root)
    guard.reject(ec.InvalidValueError, lambda: plugin.get_cohort_stats(bad))
    guard.reject(ec.InvalidValueError, lambda: plugin.get_analytics("day", start=bad, end="2026-12-31"))
    guard.reject(ec.InvalidValueError, lambda: plugin.get_analytics("day", start="2026-01-01", end=bad))
    guard.reject(ec.InvalidValueError, lambda: plugin.get_top_records("day", bad))
    for report in ("daily_totals", "top_records"):
        guard.reject(ec.InvalidValueError, lambda r=report: ec.reports.run(db, r, start=bad))
        guard.reject(ec.InvalidValueError, lambda r=report: ec.reports.run(db, r, start="2026-01-01", end=bad))
    assert ec.reports.run(db, "daily_totals", start="2026-02-28")["transactionCount"].sum() == 1  # valid still works


def test_invalid_months_in_reports(root: Root, db: ec.Database) -> None:
    guard = Guard(root)
    for bad in ("2026-13", "2026-00", "0000-01", "2026-12\n", "2026-1", "2026-W48"):
        guard.reject(ec.InvalidValueError, lambda b=bad: ec.reports.run(db, "monthly_totals", start_month=b))
        guard.reject(ec.InvalidValueError, lambda b=bad: ec.reports.run(db, "monthly_totals", start_month="2026-01",
                                                                        end_month=b))
    assert ec.reports.run(db, "monthly_totals", start_month="2026-03")["transactionCount"].sum() == 1


def test_s3_uri_rules() -> None:
    for bad in ("s3://bucket/p?x=1", "s3://bucket/p#frag", "s3://bucket?x", "s3://K:S@bucket/p?versionId=3"):
        expect(ec.ConfigurationError, lambda b=bad: StorageConfig.from_uri(b))
    cfg = StorageConfig.from_uri("s3://bucket/data@2024/p", key="k", secret="s")
    assert (cfg.root, cfg.key, cfg.secret) == ("bucket/data@2024/p", "k", "s")
    cfg = StorageConfig.from_uri("s3://AKIA:abc/def+ghi@my-bucket/x@y/z")  # '/' and '+' in the secret still parse
    assert (cfg.root, cfg.key, cfg.secret) == ("my-bucket/x@y/z", "AKIA", "abc/def+ghi")
    assert StorageConfig.from_uri("s3://AKIA:a%40b@bkt/p").secret == "a@b"
    assert StorageConfig.from_uri("s3://AKIA@bkt/p").key == "AKIA"
    exc = expect(ec.ConfigurationError, lambda: StorageConfig.from_uri("s3://AKIA:a@b@bkt/p"))
    assert "%40" in str(exc) and "a@b" not in str(exc)  # the hint, and never the secret


def test_file_uris_must_be_absolute(tmp_path: Path) -> None:
    for bad in ("file://relative/dir", "file:relative", "file://host/abs", "file:///tmp/x?y", "file:///tmp/x#y"):
        exc = expect(ec.ConfigurationError, lambda b=bad: ec.connect(b))
        assert "file:///" in str(exc) or "plain path" in str(exc)
    assert StorageConfig.from_uri(f"file://localhost{tmp_path}").root == str(tmp_path)


def test_newline_suffixed_names(root: Root, db: ec.Database) -> None:
    guard = Guard(root)
    for bad in ("wallets\n", "accounts\n", "a\r\n"):
        guard.reject(ec.InvalidNameError, lambda b=bad: db.create_resource(b, {"id": "string"}))
        guard.reject(ec.InvalidNameError, lambda b=bad: ec.EventualConsistencyPlugin(resource="wallets", field=b))
    guard.reject(ec.InvalidNameError, lambda: wallets(db).add("w1\n", "balance", 1))


@pytest.mark.parametrize("spec", ["number|default:nan", "number|default:inf", "number|default:-inf",
                                  "number|default:1e400", "integer|default:9223372036854775808",
                                  "decimal(18,2)|default:1e999999999", "decimal(18,2)|default:sNaN"])
def test_bad_defaults_write_nothing_and_keep_the_name_free(root: Root, spec: str) -> None:
    db = root.connect()
    guard = Guard(root)
    guard.reject(ec.SchemaError, lambda: db.create_resource("accounts", {"id": "string|required", "v": spec}))
    assert listing(root) == []
    db.create_resource("accounts", {"id": "string|required", "v": "number|default:0"})  # the name is still free


def test_resource_without_id_and_deferred_plugin_mismatch(root: Root) -> None:
    db = root.connect()
    guard = Guard(root)
    exc = guard.reject(ec.SchemaError, lambda: db.create_resource("accounts", {"balance": "number"}))
    assert "'id'" in str(exc)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="accounts", field="balance", auto_consolidate=False))
    guard.reject(ec.ConfigurationError, lambda: db.create_resource("accounts", {"id": "string", "balance": "string"}))
    guard.reject(ec.ConfigurationError, lambda: db.create_resource("accounts", {"id": "string"}))
    assert listing(root) == []
    db.create_resource("accounts", {"id": "string", "balance": "number|default:0"})


@pytest.mark.parametrize("options", [{"checkpoint_interval": 0}, {"checkpoint_interval": "10"},
                                     {"dedup_window": -1}, {"dedup_window": math.nan}], ids=repr)
def test_connect_options(root: Root, options: dict[str, Any]) -> None:
    expect(ec.ConfigurationError, lambda: root.connect(**options))
    assert listing(root) == []


def test_compact_targets(root: Root, db: ec.Database) -> None:
    w, guard = wallets(db), Guard(root)
    for kwargs in ({"target_rows": 0}, {"target_bytes": 0}, {"target_bytes": -5}, {"target_rows": True}):
        guard.reject(ec.InvalidValueError, lambda k=kwargs: w.compact("balance", **k))
    guard.unchanged()


# -- the fuzz: deterministic inputs ---------------------------------------------------------------
def _unique(cases: list[Case]) -> list[Case]:
    labels = [label for label, _ in cases]
    assert len(labels) == len(set(labels)), [x for x in labels if labels.count(x) > 1]
    return cases


def _huge(rng: random.Random) -> int:
    value = rng.randint(10**309, 10 ** rng.randint(310, 6000)) * rng.choice((1, -1))
    return value


def _label(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"int:{'-' if value < 0 else ''}{value.bit_length()}b:{abs(value) % 10**9}"
    return f"{type(value).__name__}:{value!r}"


def bad_amounts(rng: random.Random) -> list[Case]:
    fixed: list[Any] = [
        math.nan, math.inf, -math.inf, 10**400, -(10**400), 10**5000, 2**1024, Decimal("NaN"), Decimal("sNaN"),
        Decimal("-sNaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1e400"), Decimal("-1e999999"),
        Fraction(10**400, 3), "10", "", "nan", "1e3", None, True, False, complex(1, 1), complex(0, 0), [1], {},
        b"1", object, (1,), {1.0}, dt.timedelta(1), float("-nan"),
    ]
    cases = [(_label(v) if not isinstance(v, float) or not math.isnan(v) else f"float:nan{i}", v)
             for i, v in enumerate(fixed)]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        pass
    else:
        cases += [("np.float64:nan", np.float64("nan")), ("np.float32:inf", np.float32("inf")),
                  ("np.float64:-inf", np.float64("-inf")), ("np.bool_", np.bool_(True)),
                  ("np.array0d", np.array(1.0)), ("np.float16:nan", np.float16("nan"))]
    for i in range(12):
        cases.append((f"rand-huge-{i}", _huge(rng)))
    for i in range(6):
        cases.append((f"rand-str-{i}", f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 4)}f}"))
    return _unique(cases)


def bad_ids(rng: random.Random) -> list[Case]:
    fixed: list[Any] = ["", "a/b", "../x", "x/../y", "..", "a=b", "a\\b", "tab\there", "w1\n", "w1\r", "\n", "\x00",
                        "a\x7f", "a\x85b", "\ud800", "x\udfff", "x" * 1025, "é/" * 3, 5, None, 1.5, b"w1", ("w1",),
                        ["w1"], True]
    cases = [(_label(v), v) for v in fixed]
    alphabet = "abcXYZ019-_:.@ é€"
    for i in range(14):
        base = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        bad = rng.choice(["/", "=", "..", "\\", "\n", "\x01", "\x1f", "\ud83d", "\x9f"])
        at = rng.randint(0, len(base))
        cases.append((f"rand-id-{i}:{base[:at] + bad + base[at:]!r}", base[:at] + bad + base[at:]))
    return _unique(cases)


def bad_names(rng: random.Random) -> list[Case]:
    fixed: list[Any] = ["", "a/b", "a=b", "..", "a.b", "1abc", "has space", "wallets\n", "wallets\r\n", "\ud800",
                        "x" * 101, None, 5, b"wallets", "wallets_transactions_balance", "_x", "é", "wallets\x00",
                        "-a", "a-b", "wallets\t"]
    cases = [(_label(v), v) for v in fixed]
    for i in range(8):
        name = "r" + "".join(rng.choice("abc_1") for _ in range(rng.randint(0, 8)))
        bad = rng.choice(["\n", " ", ".", "/", "-", "\u00e9", "$"])
        cases.append((f"rand-name-{i}:{name + bad!r}", name + bad))
    return _unique(cases)


def bad_timezones(rng: random.Random) -> list[Case]:
    fixed: list[Any] = ["Mars/Olympus", "", "UTC+3", "../etc/passwd", 5, None, "localtime", "posixrules", "Factory",
                        "right/UTC", "posix/UTC", "utc", "\ud800", "UTC\x00", "Europe/../UTC", "a" * 300,
                        "/etc/localtime", "Etc", "America/", "America/Sao_Paulo\n", " UTC", b"UTC"]
    cases = [(_label(v), v) for v in fixed]
    for i in range(6):
        tz = "".join(rng.choice("Zz/_xq9") for _ in range(rng.randint(3, 10)))
        cases.append((f"rand-tz-{i}:{tz}", tz + "/Nowhere"))
    return _unique(cases)


def bad_timestamps(rng: random.Random) -> list[Case]:
    fixed: list[Any] = [
        dt.datetime(2026, 1, 1), dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))),
        dt.datetime(1, 1, 1, tzinfo=UTC), dt.datetime(9999, 12, 31, 23, tzinfo=UTC), dt.datetime.max.replace(tzinfo=UTC),
        dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))), dt.date(2026, 1, 1), "2026-01-01T00:00:00Z", 1767225600, 1.5, "now",
    ]
    cases = [(_label(v), v) for v in fixed]
    for i in range(8):
        hours = rng.randint(1, 14)
        cases.append((f"rand-year1-{i}-{hours}", dt.datetime(1, 1, 1, rng.randint(0, hours - 1),
                                                             tzinfo=dt.timezone(dt.timedelta(hours=hours)))))
    for i in range(4):
        cases.append((f"rand-naive-{i}", dt.datetime(rng.randint(1970, 2100), rng.randint(1, 12), rng.randint(1, 28))))
    return _unique(cases)


def bad_dates(rng: random.Random) -> list[Case]:
    fixed: list[Any] = ["2026-13-01", "2026-02-30", "2024-13-45", "2026-00-10", "0000-01-01", "2026-04-31",
                        "2026-12-01\n", " 2026-12-01", "", "yesterday", "2026/12/01", "2026-1", 20261201, None, 1.5,
                        "2026-12-01T25:00", "\ud800"]
    cases = [(_label(v), v) for v in fixed]
    for i in range(10):
        year = rng.randint(1000, 9999)
        if i % 2:
            text = f"{year}-{rng.choice([0, *range(13, 100)]):02d}-{rng.randint(1, 28):02d}"
        else:
            month = rng.choice([2, 4, 6, 9, 11])
            text = f"{year}-{month:02d}-{rng.randint(31, 99):02d}"
        cases.append((f"rand-date-{text}", text))
    return _unique(cases)


def bad_specs(rng: random.Random) -> list[Case]:
    fixed: list[Any] = [
        {"v": "number"}, {"id": "string", "v": "number|default:nan"}, {"id": "string", "v": "number|default:inf"},
        {"id": "string", "v": "number|default:-inf"}, {"id": "string", "v": "number|default:1e400"},
        {"id": "string", "v": "integer|default:99999999999999999999"}, {"id": "string", "v": "money"},
        {"id": "string", "v": "number|requird"}, {"id": "string", "v": "decimal(0,0)"},
        {"id": "string", "v": "decimal(39,2)"}, {"id": "string", "v": "decimal(2,3)"},
        {"id": "string", "v": "decimal(18,2)|default:0.001"}, {"id": "string", "v": "decimal(18,2)|default:sNaN"},
        {"id": "string", "v": "decimal(18,2)|default:1e999999999"}, {"id": "string", "v": "boolean|default:yes"},
        {"id": "number"}, {}, None, [], {"id": "string", "bad name": "number"}, {"id": "string", "x": 5},
        {"id": "string", "x": ""}, {"id": "string", "x": "string|default:\ud800"}, {"id": "decimal(18,2)"},
        {"id": "string", "v": "decimal(18,2|default:0"}, {"id": "string", "v": "number|default:"},
        {"id": "string", "v\n": "number"}, "id:string",
    ]
    cases = [(f"spec:{v!r}", v) for v in fixed]
    for i in range(6):
        default = rng.choice(["nan", "inf", "-inf", "1e309", "NaN", "Infinity"])
        cases.append((f"rand-spec-{i}:{default}", {"id": "string", f"v{i}": f"number|default:{default}"}))
    return _unique(cases)


def bad_connect_options(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for value in (0, -1, "10", 1.5, True, None, math.nan, 10.0):
        cases.append((f"checkpoint_interval={value!r}", {"checkpoint_interval": value}))
    for value in (-1, math.nan, math.inf, "60", None, True, 10**30, -math.inf, -0.5):
        cases.append((f"dedup_window={value!r}", {"dedup_window": value}))
    for i in range(4):
        cases.append((f"rand-ci-{i}", {"checkpoint_interval": -rng.randint(1, 10**6)}))
    return _unique(cases)


def bad_uris(rng: random.Random) -> list[Case]:
    fixed: list[Any] = ["", "ftp://x/y", "memory://", "s3:///prefix", "s3://b/p?x=1", "s3://b/p#frag", "s3://b/p?x#y",
                        "file://relative/dir", "file:relative", "file:///tmp/x?y", "memory://a#b", "memory://a?b",
                        "s3://bucket:9000/p", "s3://K:a@b@bucket/p", "s3://a b/p", "s3://b\x00/p", "\x00",
                        "s3://\ud800/p", None, 5, b"/tmp/x", "http://example.com/x", "gs://b/p", "/tmp/\ud800x",
                        "s3://K:S", "s3://@", "file://host/x"]
    cases = [(_label(v), v) for v in fixed]
    for i in range(6):
        scheme = "".join(rng.choice("abcxyz") for _ in range(rng.randint(2, 6)))
        cases.append((f"rand-scheme-{i}", f"{scheme}://bucket/p"))
    return _unique(cases)


def bad_retain(rng: random.Random) -> list[Case]:
    fixed: list[Any] = [10**30, 0, -1, "0d", "-5d", "abc", "30", "30 d", "²d", "٣٠d", 1.5, None, True, "36501d",
                        36501, "1" * 5000 + "d", "d", ""]
    cases = [(_label(v), v) for v in fixed]
    for i in range(4):
        cases.append((f"rand-retain-{i}", rng.randint(36501, 10**40)))
    return _unique(cases)


def bad_compaction(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    for name in ("target_rows", "target_bytes"):
        for value in (0, -1, True, 1.5, "10", None, 2**63, 10**30):
            cases.append((f"{name}={value!r}", {name: value}))
    return _unique(cases)


def bad_counts(rng: random.Random) -> list[Case]:
    """``n`` of get_last_n and ``limit`` of get_top_records."""
    cases: list[Case] = []
    for name in ("n", "limit"):
        for value in (0, -1, 10**9 if name == "n" else 2**63, 10**30, True, 1.5, "10", None):
            cases.append((f"{name}={value!r}", (name, value)))
    return _unique(cases)


def _inputs() -> dict[str, list[Case]]:
    rng = random.Random(SEED)
    makers = {"amounts": bad_amounts, "ids": bad_ids, "names": bad_names, "timezones": bad_timezones,
              "timestamps": bad_timestamps, "dates": bad_dates, "specs": bad_specs, "connect": bad_connect_options,
              "uris": bad_uris, "retain": bad_retain, "compaction": bad_compaction, "counts": bad_counts}
    return {name: make(rng) for name, make in makers.items()}


INPUTS = _inputs()


# -- the fuzz through the Python API ------------------------------------------------------------
def test_fuzz_api_pure() -> None:
    """Inputs rejected before any storage is touched: time zones, URIs, retain days."""
    for _, tz in INPUTS["timezones"]:
        expect(ec.InvalidTimezoneError, lambda t=tz: ec.EventualConsistencyPlugin(
            resource="wallets", field="balance", cohort={"timezone": t}))
    for _, uri in INPUTS["uris"]:
        expect(ec.ConfigurationError, lambda u=uri: StorageConfig.from_uri(u))
        expect(ec.ConfigurationError, lambda u=uri: ec.connect(u))
    expect(ec.ConfigurationError, lambda: StorageConfig.from_uri("s3://bucket/p", endpoint_url="ftp://x"))
    for _, days in INPUTS["retain"]:
        expect(ec.InvalidValueError, lambda d=days: parse_days(d))
    for _, name in INPUTS["names"]:
        expect(ec.InvalidNameError, lambda n=name: ec.EventualConsistencyPlugin(resource=n, field="balance"))
        if name != "wallets_transactions_balance":  # reserved for resources only; a fine field name
            expect(ec.InvalidNameError, lambda n=name: ec.EventualConsistencyPlugin(resource="wallets", field=n))


def test_fuzz_api_storage(root: Root, db: ec.Database) -> None:
    """Every input of every storage category, on each backend; the listing is checked after each."""
    w = wallets(db)
    before = committed(db)
    guard = Guard(root)
    balance, credit = w.plugin("balance"), w.plugin("credit")
    for _l, amount in INPUTS["amounts"]:
        for op in ("add", "sub", "set"):
            guard.reject(ec.InvalidValueError, lambda a=amount, o=op: getattr(w, o)("w1", "balance", a))
        guard.reject(ec.InvalidValueError, lambda a=amount: w.add("w1", "credit", a))
    for _l, bad_id in INPUTS["ids"]:
        guard.reject(ec.InvalidNameError, lambda b=bad_id: w.add(b, "balance", 1))
        if bad_id is not None:  # id=None asks for a generated transaction id
            guard.reject(ec.InvalidNameError, lambda b=bad_id: w.add("w1", "balance", 1, id=b))
        guard.reject(ec.InvalidNameError, lambda b=bad_id: w.insert({"id": b}))
        guard.reject(ec.InvalidNameError, lambda b=bad_id: w.delete(b))
    for _l, ts in INPUTS["timestamps"]:
        guard.reject(ec.InvalidValueError, lambda t=ts: w.add("w1", "balance", 1, timestamp=t))
    for i, (_l, name) in enumerate(INPUTS["names"]):
        guard.reject(ec.InvalidNameError, lambda n=name: db.create_resource(n, {"id": "string|required"}))
        guard.reject(ec.UnknownResourceError, lambda n=name, i=i: db.consolidate(n if isinstance(n, str) else f"z{i}"))
    for i, (_l, spec) in enumerate(INPUTS["specs"]):
        guard.reject(ec.ValidationError, lambda s=spec, i=i: db.create_resource(f"r{i}", s))
    for _l, day in INPUTS["dates"]:
        guard.reject(ec.InvalidValueError, lambda d=day: balance.get_cohort_stats(d))
        guard.reject(ec.InvalidValueError, lambda d=day: credit.get_top_records("day", d))
        if day is not None:  # None means "the default range" there
            guard.reject(ec.InvalidValueError, lambda d=day: balance.get_analytics("day", d, "2026-12-31"))
        if isinstance(day, str):  # a report reads str(value): the int 20261201 is a valid basic ISO date
            guard.reject(ec.InvalidValueError, lambda d=day: ec.reports.run(db, "daily_totals", start=d))
    for _l, (name, value) in INPUTS["counts"]:
        if name == "n":
            guard.reject(ec.InvalidValueError, lambda v=value: balance.get_last_n("day", v))
        else:
            guard.reject(ec.InvalidValueError, lambda v=value: balance.get_top_records("day", "2026-03-01", limit=v))
    for _l, days in INPUTS["retain"]:
        guard.reject(ec.InvalidValueError, lambda d=days: w.gc(d, field="balance"))
    for _l, kwargs in INPUTS["compaction"]:
        guard.reject(ec.InvalidValueError, lambda k=kwargs: w.compact("balance", **k))
    for _l, options in INPUTS["connect"]:
        guard.reject(ec.ConfigurationError, lambda o=options: root.connect(**o))
    guard.unchanged()
    assert committed(db) == before
    assert guard.checked >= 600  # every input above, once per call shape


# -- the fuzz through the CLI -------------------------------------------------------------------
def _valid_days(text: str) -> bool:
    """Whether the CLI, which reads ``--retain 30`` as ``30d``, would accept ``text``."""
    try:
        parse_days(text, bare_days=True)
    except ec.InvalidValueError:
        return False
    return True


def _cli_cases(root: Root) -> list[tuple[str, list[str]]]:
    """(label, argv) of bad CLI invocations against ``root`` (which holds the ``db`` fixture)."""
    at = ["--root", root.uri, *(["--endpoint-url", root.endpoint_url] if root.endpoint_url else [])]
    cases: list[tuple[str, list[str]]] = []
    for label, uri in INPUTS["uris"]:
        if isinstance(uri, str) and uri:
            cases.append((f"root:{label}", ["inspect", "--root", uri]))
    for label, days in INPUTS["retain"]:
        text = str(days)
        if isinstance(days, (str, int)) and not isinstance(days, bool) and text and not _valid_days(text):
            cases.append((f"retain:{label}", ["gc", *at, "--retain", text]))
    for label, day in INPUTS["dates"]:
        if isinstance(day, str) and day:
            cases.append((f"date:{label}", ["sql", "run", "daily_totals", *at, "-p", f"start={day}"]))
            cases.append((f"end:{label}", ["sql", "run", "top_records", *at, "-p", "start=2026-01-01", "-p", f"end={day}"]))
    for label, name in INPUTS["names"]:
        if isinstance(name, str) and name:
            cases.append((f"resource:{label}", ["consolidate", *at, "--resource", name]))
            cases.append((f"field:{label}", ["consolidate", *at, "--resource", "wallets", "--field", name]))
    for label, bad_id in INPUTS["ids"]:
        if isinstance(bad_id, str) and "\x00" not in bad_id:
            cases.append((f"id:{label}", ["recalculate", *at, "--resource", "wallets", "--field", "balance",
                                          "--id", bad_id]))
    for value in ("0", "-1", "abc", "1.5"):
        cases.append((f"target-rows:{value}", ["compact", *at, "--target-rows", value]))
    for report, param in (("monthly_totals", "start_month=2026-13"), ("monthly_totals", "start_month=26-01"),
                          ("top_records", "limit=-1"), ("top_records", "limit=abc"), ("top_records", f"limit={2**64}"),
                          ("reconciliation", "tolerance=nan"), ("reconciliation", "tolerance=inf"),
                          ("daily_totals", "nosuch=1"), ("daily_totals", "start"), ("nosuch_report", "start=2026-01-01")):
        cases.append((f"report:{report}:{param}", ["sql", "run", report, *at, "-p", param]))
    cases.append(("log-level", ["--log-level", "loud", "inspect", *at]))
    labels = [label for label, _ in cases]
    assert len(labels) == len(set(labels))
    return cases


def _check_cli_failure(code: int, err: str, argv: list[str]) -> None:
    assert code != 0, argv
    assert err.strip(), argv
    assert "Traceback" not in err, err
    if code == 1:  # ecanalytics errors print their own message, with no Python type in front
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert not re.match(r"error: \w+(Error|Exception): ", err), err
    else:
        assert code == 2 and "Error" in err, err  # click's usage errors


def test_fuzz_cli(root: Root, db: ec.Database, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's entry point (``ecanalytics.cli.main``, what the console script runs) in-process.
    Every case on local disk and memory://; on S3 a seeded sample of a third (each run opens a new
    S3 client, and what differs on S3 is only where the unchanged listing is read)."""
    wallets(db).plugin("balance").flush()
    guard = Guard(root)
    before = committed(db)
    cases = _cli_cases(root)
    if root.kind == "s3":
        cases = random.Random(SEED).sample(cases, len(cases) // 3)
    for _, argv in cases:
        code = main(argv)
        captured = capsys.readouterr()
        _check_cli_failure(code, captured.err, argv)
        assert listing(root) == guard.keys, argv
    guard.unchanged()
    assert committed(db) == before


def test_fuzz_cli_subprocess(tmp_path: Path) -> None:
    """A sample through the real entry point in a new interpreter: exit code 1, one line, no traceback."""
    folder = tmp_path / "ec-data"
    with ec.connect(str(folder)) as db:
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
        w = db.create_resource("wallets", SPEC)
        w.insert({"id": "w1", "balance": 1})
        w.add("w1", 2)
    before = sorted(str(p) for p in folder.rglob("*"))
    at = ["--root", str(folder)]
    runs = [["inspect", "--root", "file://relative/dir"], ["inspect", "--root", "s3://b/p?x=1#f"],
            ["gc", *at, "--retain", str(10**30)], ["sql", "run", "daily_totals", *at, "-p", "start=2026-13-01"],
            ["sql", "run", "monthly_totals", *at, "-p", "start_month=2026-13"],
            ["recalculate", *at, "--resource", "wallets", "--id", "w1\n"]]

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ecanalytics.cli", *argv], capture_output=True, text=True,
                              timeout=180, cwd=tmp_path)

    with ThreadPoolExecutor(2) as pool:
        for argv, out in zip(runs, pool.map(run, runs), strict=True):
            assert out.returncode == 1, (argv, out.stderr)
            _check_cli_failure(out.returncode, out.stderr, argv)
    assert sorted(str(p) for p in folder.rglob("*")) == before
    assert not (tmp_path / "relative").exists()


def _cli_count() -> int:
    root = Root("count", "memory://count")
    return len(_cli_cases(root))


def test_fuzz_counts() -> None:
    """At least 150 distinct bad inputs, through the API and the CLI together."""
    api = sum(len(cases) for cases in INPUTS.values())
    assert api >= 150, api
    assert _cli_count() >= 100
    assert api + _cli_count() >= 250


def _iter_all() -> Iterator[str]:
    for category, cases in INPUTS.items():
        for label, _value in cases:
            yield f"{category}:{label}"


def test_fuzz_inputs_are_distinct_and_deterministic() -> None:
    keys = list(_iter_all())
    assert len(keys) == len(set(keys))
    assert list(_iter_all()) == [f"{c}:{label}" for c, cases in _inputs().items() for label, _ in cases]


def test_frames_and_filters_of_the_wrong_shape(root: Root, db: ec.Database) -> None:
    """A decimal256 column, a filter that is not a dict, and a number in a string attribute of a
    frame each raise a typed error and write nothing; a decimal256 that fits 38 digits is read."""
    import pyarrow as pa

    w = wallets(db)
    guard = Guard(root)
    wide = pa.table({"originalId": ["w1"], "value": pa.array([Decimal("1.50")], type=pa.decimal256(40, 2))})
    assert "decimal128(38, 2)" in str(guard.reject(ec.InvalidValueError, lambda: w.write_transactions(wide, "credit")))
    assert "decimal128(38, 2)" in str(guard.reject(ec.InvalidValueError, lambda: w.write_transactions(wide, "balance")))
    for bad in ([1, 2], "USD", 5, ("currency", "USD")):
        guard.reject(ec.ArgumentError, lambda bad=bad: w.query(bad))
        guard.reject(ec.ArgumentError, lambda bad=bad: db.resources["wallets_transactions_balance"].query(bad))  # type: ignore[union-attr]
    for frame in (pl.DataFrame({"id": ["w9"], "note": [5]}), [{"id": "w9", "note": 5}],
                  pl.DataFrame({"id": ["w9"], "n": [1.5]}), pl.DataFrame({"id": ["w9"], "balance": [True]})):
        guard.reject(ec.SchemaError, lambda frame=frame: w.insert_many(frame))
    guard.reject(ec.SchemaError, lambda: w.insert({"id": "w9", "note": 5}))  # the same rule as one insert
    guard.unchanged()
    fits = pa.table({"originalId": ["w1"], "value": pa.array([Decimal("1.50")], type=pa.decimal256(20, 2))})
    w.write_transactions(fits, "credit")
    db.consolidate()
    assert w.get("w1")["credit"] == Decimal("2.75")
