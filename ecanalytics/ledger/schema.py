"""Resource schemas from the seed's attribute strings (``'string|required'``, ``'number|default:0'``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Literal

import polars as pl

from ecanalytics.errors import SchemaError, SchemaEvolutionError, StaleSchemaError
from ecanalytics.storage.paths import describe, validate_name, validate_record_id

Kind = Literal["string", "number", "integer", "boolean", "decimal"]
_DECIMAL = re.compile(r"^decimal\(\s*([0-9]+)\s*,\s*([0-9]+)\s*\)\Z")
_INT64 = (-(2**63), 2**63 - 1)
_DTYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "number": pl.Float64(),
    "integer": pl.Int64(),
    "boolean": pl.Boolean(),
}


def to_decimal(value: object, precision: int, scale: int, what: str) -> Decimal:
    """An exact ``Decimal`` that fits ``decimal(precision, scale)``; more scale is an error, never
    rounded. Floats go through their shortest repr, so ``0.1`` is exactly ``0.1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise SchemaError(f"{what} must be a number for decimal({precision},{scale}); got {type(value).__name__} {describe(value)}.")
    try:
        # repr(float(...)): numpy floats repr as 'np.float64(0.1)'.
        number = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise SchemaError(f"{what}: {describe(value)} is not a decimal number.") from exc
    if not number.is_finite():  # NaN, sNaN, infinity
        raise SchemaError(f"{what} must be finite; got {describe(value)}.")
    if number and number.adjusted() >= precision - scale:  # before quantize, which fails on huge exponents
        raise SchemaError(f"{what} {describe(value)} does not fit decimal({precision},{scale}); use a wider type.")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    with localcontext() as ctx:
        ctx.prec = 80  # the default 28 digits cannot quantize a decimal(38,s) value
        quantum = Decimal(1).scaleb(-scale)
        if -exponent > scale and number != number.quantize(quantum):
            raise SchemaError(
                f"{what} {describe(value)} has more than {scale} decimal places for decimal({precision},{scale}); "
                "round it explicitly (nothing is rounded silently)."
            )
        number = number.quantize(quantum)
    if len(number.as_tuple().digits) > precision:
        raise SchemaError(f"{what} {describe(value)} does not fit decimal({precision},{scale}).")
    return number


@dataclass(frozen=True)
class Attribute:
    """One typed attribute: its kind, whether it is required, and its default.

    ``decimal(p,s)`` attributes hold exact decimals (Python ``Decimal``, Polars and Parquet
    ``Decimal(p, s)``, DuckDB ``DECIMAL(p, s)``).
    """

    name: str
    kind: Kind
    required: bool
    default: Any
    spec: str
    precision: int = 0
    scale: int = 0

    @classmethod
    def parse(cls, name: str, spec: str) -> Attribute:
        """Parse ``'number|required|default:0'`` or ``'decimal(18,2)|default:0'`` style specs."""
        validate_name("attribute", name)
        if not isinstance(spec, str) or not spec:
            raise SchemaError(f"Attribute {name!r}: expected a spec string such as 'number|default:0'.")
        kind, *rules = [p.strip() for p in spec.split("|")]
        precision = scale = 0
        match = _DECIMAL.match(kind)
        if match:
            kind, precision, scale = "decimal", int(match.group(1)), int(match.group(2))
            if not 1 <= precision <= 38 or scale > precision:
                raise SchemaError(f"Attribute {name!r}: decimal(p,s) needs 1 <= p <= 38 and s <= p.")
        elif kind not in _DTYPES:
            raise SchemaError(f"Attribute {name!r}: unknown type {kind!r}; use one of {sorted(_DTYPES)} or decimal(p,s).")
        attr = cls(name, kind, False, None, spec, precision, scale)  # type: ignore[arg-type]
        required, default = False, None
        for rule in rules:
            if rule == "required":
                required = True
            elif rule == "optional":
                required = False
            elif rule.startswith("default:"):
                # Checked like a stored value, so 'number|default:nan' fails here, before any write.
                default = attr.check(attr._coerce(rule[len("default:") :]))
            else:
                raise SchemaError(f"Attribute {name!r}: unknown rule {rule!r} (use required, optional, default:V).")
        return cls(name, attr.kind, required, default, spec, precision, scale)

    def _coerce(self, text: str) -> Any:
        if self.kind == "decimal":
            try:
                return to_decimal(Decimal(text), self.precision, self.scale, f"Default of {self.name!r}")
            except InvalidOperation as exc:
                raise SchemaError(f"Attribute {self.name!r}: default {text!r} is not a valid decimal.") from exc
        return _coerce(self.name, self.kind, text)

    @property
    def numeric(self) -> bool:
        """Whether the attribute can be a managed field."""
        return self.kind in ("number", "decimal")

    @property
    def dtype(self) -> pl.DataType:
        return pl.Decimal(self.precision, self.scale) if self.kind == "decimal" else _DTYPES[self.kind]

    def check(self, value: Any) -> Any:
        """Validate one value of this attribute (None allowed).

        ``number`` values must be finite and fit a 64-bit float (``10**400`` does not),
        ``integer`` values a signed 64-bit integer, and ``string`` values must be valid Unicode
        (no lone surrogates such as ``"\\ud800"``, which cannot be stored as UTF-8).
        """
        if value is None:
            return None
        if self.kind == "decimal":
            return to_decimal(value, self.precision, self.scale, f"Attribute {self.name!r}")
        ok = {
            "string": isinstance(value, str),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }[self.kind]
        if not ok:
            raise SchemaError(f"Attribute {self.name!r} is {self.kind}; got {type(value).__name__} {describe(value)}.")
        if self.kind == "number":
            try:
                number = float(value)
            except OverflowError as exc:
                raise SchemaError(
                    f"Attribute {self.name!r} is a 64-bit float; {describe(value)} is too large for it. "
                    "Use a decimal(p,s) attribute for exact large numbers."
                ) from exc
            if not math.isfinite(number):
                raise SchemaError(f"Attribute {self.name!r} must be finite; got {describe(value)}.")
            return number
        if self.kind == "integer" and not _INT64[0] <= value <= _INT64[1]:
            raise SchemaError(
                f"Attribute {self.name!r} is a 64-bit integer; {describe(value)} is out of its range. "
                "Use a decimal(p,s) attribute for larger numbers."
            )
        if self.kind == "string" and any(0xD800 <= ord(c) < 0xE000 for c in value):
            raise SchemaError(
                f"Attribute {self.name!r}: {describe(value)} contains a lone surrogate, which is not valid "
                "Unicode text; decode the source bytes properly first."
            )
        return value


def _coerce(name: str, kind: Kind, text: str) -> Any:
    try:
        if kind == "number":
            return float(text)
        if kind == "integer":
            return int(text)
        if kind == "boolean":
            return {"true": True, "false": False}[text.lower()]
    except (ValueError, KeyError) as exc:
        raise SchemaError(f"Attribute {name!r}: default {text!r} is not a valid {kind}.") from exc
    return text


@dataclass(frozen=True)
class Schema:
    """The attributes of a resource. ``id`` is always present and is a string."""

    attributes: dict[str, Attribute]

    @classmethod
    def parse(cls, spec: dict[str, str]) -> Schema:
        """Parse and check every attribute; nothing is written by the caller unless this succeeds.

        ``id`` must be declared (``{'id': 'string|required', ...}``): a schema without it is
        rejected rather than completed silently, so the stored schema is the one written.
        """
        if not isinstance(spec, dict) or not spec:
            raise SchemaError("attributes must be a non-empty dict such as {'id': 'string|required'}.")
        attrs = {name: Attribute.parse(name, s) for name, s in spec.items()}
        if "id" not in attrs:
            raise SchemaError(
                f"attributes {sorted(attrs)} have no 'id'; every resource is keyed by it: add 'id': 'string|required'."
            )
        if attrs["id"].kind != "string":
            raise SchemaError("The 'id' attribute must be a string.")
        return cls(attrs)

    def to_spec(self) -> dict[str, str]:
        return {a.name: a.spec for a in self.attributes.values()}

    def check_evolution(self, new: Schema, resource: str) -> list[str]:
        """The attributes ``new`` adds to this (stored) schema; :class:`SchemaEvolutionError` if
        stored data could not follow the change.

        Allowed: new attributes that are optional or have a default (existing records read the
        default), and an existing attribute becoming optional, or required with its default.
        Refused: removing an attribute, changing its type or its default (existing records and
        rebuilds would read something else), and requiring a value without a default.
        """
        problems = []
        removed = sorted(set(self.attributes) - set(new.attributes))
        if removed:
            problems.append(f"removing {removed} would drop their stored values (keep them in the attributes)")
        for name, old in self.attributes.items():
            now = new.attributes.get(name)
            if now is None:
                continue
            if (now.kind, now.precision, now.scale) != (old.kind, old.precision, old.scale):
                problems.append(f"{name!r} is stored as {old.spec!r}; changing its type to {now.spec!r} would not read "
                                "the stored values (add a new attribute instead)")
            elif now.default != old.default:
                problems.append(f"changing the default of {name!r} from {old.default!r} to {now.default!r} would "
                                "change what existing records and rebuilds read")
            elif now.required and not old.required and now.default is None:
                problems.append(f"making {name!r} required without a default: existing records may have no value")
        added = [name for name in new.attributes if name not in self.attributes]
        for name in added:
            attr = new.attributes[name]
            if attr.required and attr.default is None:
                problems.append(f"adding {name!r} as required without a default: existing records have no value "
                                f"(use '{attr.kind}|optional' or '{attr.spec}|default:V')")
        if problems:
            raise SchemaEvolutionError(
                f"Cannot change the attributes of {resource!r}: {'; '.join(problems)}. Nothing was changed; the "
                f"stored attributes are {self.to_spec()}."
            )
        return added

    def conform(self, df: pl.DataFrame, where: str) -> pl.DataFrame:
        """Stored records with exactly this schema's columns, in its order. A column stored before
        its attribute was added reads the attribute's default; a column this schema does not know
        (added by another process since this one connected) raises :class:`StaleSchemaError`."""
        unknown = [c for c in df.columns if c not in self.attributes]
        if unknown:
            raise StaleSchemaError(
                f"{where} has attribute(s) {unknown} that this process's schema does not know: another process "
                "added them. Reconnect (ec.connect) to read them."
            )
        return df.select([pl.col(n).cast(a.dtype) if n in df.columns else pl.lit(a.default, dtype=a.dtype).alias(n)
                          for n, a in self.attributes.items()])

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {a.name: a.dtype for a in self.attributes.values()}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema)

    def new_record(self, values: dict[str, Any], *, check_required: bool = True) -> dict[str, Any]:
        """A full record: validated values, defaults for the rest, required ones enforced."""
        if "id" in values:  # the id first, so a bad id is reported as one (InvalidNameError)
            validate_record_id(values["id"])
        unknown = set(values) - set(self.attributes)
        if unknown:
            raise SchemaError(f"Unknown attribute(s) {sorted(unknown)}; the schema has {sorted(self.attributes)}.")
        out: dict[str, Any] = {}
        for name, attr in self.attributes.items():
            value = attr.check(values[name]) if name in values else attr.default
            if value is None and attr.required and check_required:
                raise SchemaError(f"Attribute {name!r} is required.")
            out[name] = value
        validate_record_id(out["id"])
        return out

    def frame(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=self.polars_schema, orient="row") if rows else self.empty()
