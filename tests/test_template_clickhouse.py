"""Rendered templates against real ClickHouse 18.16 and chDB (reliability.md E1, E2).

* E1: any text bound with ``String()`` (or inside ``Array()``, or as an identifier) reads
  back byte for byte, and never causes a syntax error;
* E2: an injection corpus on every typed parameter is refused with 400 by the template,
  or bound as a harmless literal (checked by the query's result);
* the evidence for leaving ``%`` unescaped (see :mod:`tinyingest.template`).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tinyingest.sinks import Sink, SinkError
from tinyingest.template import TemplateError, compile_template

# Each example is one query on a real server: keep them few (the module must stay < 60 s).
ROUNDTRIP = settings(deadline=None, max_examples=200, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Fragments that broke escapers elsewhere (reliability.md finding 6), mixed into the text.
NASTY = ["'", "\\", "\\'", "\\\\'", "''", "\0", "\n", "\r", "\t", "\b", "\x1a", "\x7f", '"',
         "`", "%", "\\%", "_", "\\_", "}}", "{{", "{%", "%}", "{#", "#}", "{{x}}", "{% end %}",
         "{{ __import__('os') }}", "--", "/*", "*/", ";", "’", "‘", "“", "\u2028", "\ufeff",
         "𝕏", "é", "\\x41", "\\0", "\\z"]

texts = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(NASTY)), max_size=8).map(
    "".join)


def run(sink: Sink, template: str, params: dict[str, Any]) -> Any:
    """Render and run; the single value of the single row."""
    sql = compile_template("%\n" + template).render(params).sql
    result = sink.query(sql)
    assert len(result.rows) == 1, sql
    return result.rows[0][0]


# -- E1: byte-exact round trips --------------------------------------------------------------


@ROUNDTRIP
@given(text=texts)
@example(text="\\")
@example(text="a\\")
@example(text="\\\\'")
@example(text="' OR 1=1 --")
@example(text="100%")
@example(text="\0\0")
def test_string_roundtrip(sink: Sink, text: str) -> None:
    assert run(sink, "SELECT {{String(x)}} AS v", {"x": text}) == text


@ROUNDTRIP
@given(text=texts)
def test_untyped_value_roundtrip(sink: Sink, text: str) -> None:
    assert run(sink, "SELECT {{x}} AS v", {"x": text}) == text


@settings(ROUNDTRIP, max_examples=40)
@given(items=st.lists(texts.filter(lambda t: "," not in t), max_size=5))
def test_array_of_strings_roundtrip(sink: Sink, items: list[str]) -> None:
    # A list (repeated keys) is used as is: elements may be empty or contain anything but
    # the "," separator, which only matters for the comma-joined form.
    assert run(sink, "SELECT {{Array(x, 'String')}} AS v", {"x": items}) == items


@settings(ROUNDTRIP, max_examples=40)
@given(name=texts.filter(lambda t: t != ""))
def test_identifier_roundtrip(sink: Sink, name: str) -> None:
    sql = compile_template("% SELECT 1 AS {{symbol(c)}}").render({"c": name}).sql
    result = sink.query(sql)
    assert result.meta[0][0] == name


def test_percent_escaping_evidence(sink: Sink) -> None:
    """Why ``%`` is sent unescaped: Tinybird's ``\\%`` reads differently per backend."""
    tinybird_style = sink.query("SELECT length('100\\%')").rows[0][0]
    assert tinybird_style == {"clickhouse": 4, "embedded": 5}[sink.name]
    assert run(sink, "SELECT {{String(x)}} AS v", {"x": "100%"}) == "100%"
    # 0x1A likewise: Tinybird's \z is "z" on 18.16 and "\z" on chDB; \x1A is 0x1A on both.
    assert sink.query("SELECT '\\z'").rows[0][0] == {"clickhouse": "z",
                                                     "embedded": "\\z"}[sink.name]
    assert run(sink, "SELECT {{String(x)}} AS v", {"x": "\x1a"}) == "\x1a"


# -- typed values reach ClickHouse as the intended type -------------------------------------------


@pytest.mark.parametrize("fn, value, expected", [
    ("Int8", "-128", -128),
    ("Int8", "-3", -3),
    ("UInt8", "0", 0),
    ("Float32", "0.1", 0.10000000149011612),  # toFloat32('0.1'), read back as a double
    ("Float64", "1e300", 1e300),
    ("Float64", "-2.5", -2.5),
    ("Float64", "1e-310", 1e-310),  # subnormal: 18.16 has no literal for it
    ("Float64", "-5e-324", -5e-324),  # ... and reads toFloat64('-5e-324') as -0.0
    ("UInt64", "18446744073709551615", 18446744073709551615),
    ("Int64", "-9223372036854775808", -9223372036854775808),
    ("Int", "7", 7),
    ("Float32", "1.5", 1.5),
    ("Float64", "1e3", 1000.0),
    ("Boolean", "false", 0),
    ("Boolean", "true", 1),
])
def test_typed_values_in_clickhouse(sink: Sink, fn: str, value: str, expected: Any) -> None:
    assert run(sink, f"SELECT {{{{{fn}(x)}}}} AS v", {"x": value}) == expected


#: (template, parameters, the single value): places where ClickHouse 18.16 takes a literal
#: only (a function call is a syntax error or "Parameters to aggregate functions must be
#: literals"), and a "-" before a negative value, which must not start a "--" comment.
NUMBERS = "(SELECT number FROM system.numbers LIMIT 10)"
LITERAL_ONLY = [
    (f"SELECT groupArray(number) FROM (SELECT number FROM {NUMBERS} "
     "LIMIT {{Int32(lim, 10)}} OFFSET {{UInt64(off, 0)}})", {"lim": "3", "off": "2"}, [2, 3, 4]),
    (f"SELECT groupArray(number) FROM (SELECT number FROM {NUMBERS} LIMIT {{{{Int8(lim)}}}})",
     {"lim": "2"}, [0, 1]),
    (f"SELECT groupArray(number) FROM (SELECT number FROM {NUMBERS} "
     "LIMIT {{Int16(size)}} OFFSET {{Int16(page) * Int16(size)}})", {"page": "2", "size": "3"},
     [6, 7, 8]),
    (f"SELECT count() FROM (SELECT number % 3 AS k FROM {NUMBERS} LIMIT {{{{UInt8(n)}}}} BY k)",
     {"n": "2"}, 6),
    (f"SELECT quantile({{{{Float64(level)}}}})(number) FROM {NUMBERS}", {"level": "0.5"}, 4.5),
    (f"SELECT quantile({{{{Float32(level)}}}})(number) FROM {NUMBERS}", {"level": "0.5"}, 4.5),
    (f"SELECT length(topK({{{{UInt16(k)}}}})(number)) FROM {NUMBERS}", {"k": "2"}, 2),
    ("SELECT concat(toString(10-{{Int32(x)}}), ' kept')", {"x": "-3"}, "13 kept"),
    ("SELECT concat(toString(10-{{Int(x)}}), ' kept')", {"x": "-3"}, "13 kept"),
    ("SELECT concat(toString(1.5-{{Float64(x)}}), ' kept')", {"x": "-1"}, "2.5 kept"),
    ("SELECT concat(toString(10-{{Int32(a) - Int32(b)}}), ' kept')", {"a": "1", "b": "4"},
     "13 kept"),
]


@pytest.mark.parametrize("template, params, expected", LITERAL_ONLY)
def test_numbers_where_a_literal_is_required(sink: Sink, template: str,
                                             params: dict[str, str], expected: Any) -> None:
    assert run(sink, template, params) == expected


def test_float32_parameter_matches_float32_column(sink: Sink) -> None:
    # Tinybird's toFloat32('0.1') equals a stored Float32 0.1; a Float64 literal 0.1 would not.
    values = "(SELECT arrayJoin([toFloat32(0.1), toFloat32(0.2), toFloat32(1.5)]) AS f)"
    for text in ("0.1", "0.2", "1.5"):
        assert run(sink, f"SELECT count() FROM {values} WHERE f = {{{{Float32(x)}}}}",
                   {"x": text}) == 1
        assert run(sink, f"SELECT count() FROM {values} WHERE f >= {{{{Float32(x)}}}}",
                   {"x": text}) == sum(1 for v in ("0.1", "0.2", "1.5")
                                      if float(v) >= float(text))


@settings(ROUNDTRIP, max_examples=100)
@given(number=st.one_of(st.integers(-(1 << 63), (1 << 64) - 1).map(str),
                        st.floats(allow_nan=False, allow_infinity=False).map(repr)))
@example(number="7.654927133881691e-231")  # toFloat64('...') on 18.16: one unit off
@example(number="1.899845472774205e-308")  # the same, subnormal
@example(number=str(-(1 << 63)))
@example(number="-0.0")
@example(number="5e-324")
@example(number="1.7976931348623157e+308")
def test_numbers_read_back_exactly(sink: Sink, number: str) -> None:
    fn = "Float64" if any(c in number for c in ".en") else \
        "Int64" if number.startswith("-") else "UInt64"
    value = run(sink, f"SELECT {{{{{fn}(x)}}}} AS v", {"x": number})
    assert value == (float(number) if fn == "Float64" else int(number))
    assert type(value) is (float if fn == "Float64" else int)


def test_non_finite_floats_are_the_value_not_a_name(sink: Sink) -> None:
    # nan/inf keep toFloat64('nan'): a bare nan could read a column of that name.
    assert run(sink, "SELECT isNaN({{Float64(x)}})", {"x": "nan"}) == 1
    assert run(sink, "SELECT {{Float64(x)}} < 0", {"x": "-inf"}) == 1
    assert run(sink, "SELECT isInfinite({{Float32(x)}})", {"x": "1e300"}) == 1


def test_arrays_and_dates_in_clickhouse(sink: Sink) -> None:
    assert run(sink, "SELECT {{Array(x, 'Int32')}} AS v", {"x": "1,-2,3"}) == [1, -2, 3]
    assert run(sink, "SELECT toString(toDate({{Date(x)}})) AS v", {"x": "2024-02-29"}) \
        == "2024-02-29"
    assert run(sink, "SELECT toString(toDateTime({{DateTime(x)}})) AS v",
               {"x": "2024-02-29 10:11:12"}) == "2024-02-29 10:11:12"


# -- E2: injection corpus on every typed parameter ------------------------------------------------

INJECTIONS = [
    "1 OR 1=1", "1) OR (1=1", "1; DROP TABLE t", "1 SETTINGS max_execution_time=0",
    "1 FORMAT TSV", "1 UNION ALL SELECT * FROM system.users", "1 UNION ALL SELECT 1",
    "1' OR '1'='1", "1\\' OR 1=1 --", "1 --", "1 /*", "0x10", "1e3", " 1", "1\n", "+1",
    "2147483648", "2024-01-01' OR 1=1 --", "2024-01-01 00:00:00 OR 1=1",
    "2024-01-01 00:00:00') OR (1=1", "`id`", "id", "*", "system.users", "a`), b",
    "{{x}}", "'; SELECT 1; --", "1,2) OR (1=1",
]
TYPES = ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt32", "UInt64", "Int", "Float32",
         "Float64", "Boolean", "Date", "DateTime", "DateTime64", "String"]

#: Ten rows with id 0..9; a filter that is injected would return more than one.
ROWS = "(SELECT number AS id, toString(number) AS s FROM system.numbers LIMIT 10)"


def test_injection_corpus_on_scalar_types(sink: Sink) -> None:
    outcomes: dict[str, int] = {"refused": 0, "literal": 0}
    for type_name in TYPES:
        template = compile_template(
            f"% SELECT count() FROM {ROWS} WHERE toString(id) = toString({{{{{type_name}(x)}}}})")
        for value in INJECTIONS:
            try:
                sql = template.render({"x": value}).sql
            except TemplateError as e:
                assert e.status == 400
                assert e.message.startswith("Template Syntax Error: Error validating")
                outcomes["refused"] += 1
                continue
            try:
                count = sink.query(sql).rows[0][0]
            except SinkError as e:  # e.g. a DateTime literal ClickHouse cannot parse
                assert "Syntax error" not in str(e), (type_name, value, sql)
                continue
            # Bound as one value: at most the one row whose id equals it.
            assert count <= 1, (type_name, value, sql)
            outcomes["literal"] += 1
    assert outcomes["refused"] > 0 and outcomes["literal"] > 0


@pytest.mark.parametrize("type_name", ["Int32", "UInt8", "Float64", "String", "Date"])
def test_injection_corpus_on_arrays(sink: Sink, type_name: str) -> None:
    template = compile_template(
        f"% SELECT count() FROM {ROWS} WHERE toString(id) IN "
        f"arrayMap(x -> toString(x), {{{{Array(x, '{type_name}')}}}})")
    for value in INJECTIONS:
        try:
            sql = template.render({"x": value}).sql
        except TemplateError as e:
            assert e.status == 400
            continue
        try:
            count = sink.query(sql).rows[0][0]
        except SinkError as e:
            assert "Syntax error" not in str(e), (value, sql)
            continue
        assert count <= len(value.split(",")), (value, sql)


@pytest.mark.parametrize("fn", ["column(x, 'id')", "symbol(x)", "columns(x, 'id')",
                                "columns(x, 'id', fn='max')"])
def test_injection_corpus_on_identifiers(sink: Sink, fn: str) -> None:
    template = compile_template(f"% SELECT {{{{{fn}}}}} FROM {ROWS} WHERE id = 0")
    for value in INJECTIONS:
        try:
            sql = template.render({"x": value}).sql
        except TemplateError as e:
            assert e.status == 400
            continue
        try:
            rows = sink.query(sql).rows
        except SinkError as e:  # an unknown column: the only failure allowed
            assert "Syntax error" not in str(e), (value, sql)
            continue
        # Only the real column name resolves, and nothing can add rows.
        assert len(rows) == 1, (value, sql)
        assert value.strip() == "id", (value, sql)
