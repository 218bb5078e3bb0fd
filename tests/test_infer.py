"""Schema inference (tinyingest.model.infer): each type rule, the bounds, the renderers,
and the end-to-end promise: a table made from the inferred .datasource takes the sample
rows through the gateway's own parsers with none quarantined (chDB)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinyingest import parser
from tinyingest.datafiles import DataSource, parse_datasource, parse_schema
from tinyingest.ddl import create_table_sql
from tinyingest.model.infer import (
    InferenceError,
    Inference,
    SchemaAnalyzer,
    analyze_csv,
    analyze_ndjson,
    analyze_response,
    render_datasource,
    render_schema,
    suggest_engine,
)
from tinyingest.native import encode_block
from tinyingest.sinks.embedded import EmbeddedSink


def ndjson(*rows: object) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def types_of(result: Inference) -> dict[str, str]:
    return {column.name: column.ch_type for column in result.columns}


def infer(*rows: object, **options: Any) -> dict[str, str]:
    return types_of(analyze_ndjson(ndjson(*rows), **options))


def one(*values: object, **options: Any) -> str:
    """The type of key "v" over rows holding ``values``."""
    return infer(*({"v": value} for value in values), **options)["v"]


# -- scalar rules ------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "expected"), [
    ((1, 2, -3), "Int16"),
    ((32767, -32768), "Int16"),
    ((32768,), "Int32"),
    ((-32769,), "Int32"),
    ((2**31,), "Int64"),
    ((-(2**63), 2**63 - 1), "Int64"),
    ((2**63,), "UInt64"),
    ((2**64 - 1, 0), "UInt64"),
    ((2**64,), "String"),
    ((-1, 2**63), "String"),
    ((1.5,), "Float64"),
    ((1, 2.5), "Float64"),
    ((2**70, 0.5), "Float64"),
    ((True, False), "UInt8"),
    ((True, 300), "Int16"),
    ((True, 1.5), "String"),
    (("a",), "String"),
    ((1, "a"), "String"),
    (("",), "String"),
])
def test_scalar_types(values: tuple[object, ...], expected: str) -> None:
    assert one(*values) == expected


def test_wide_integers_when_narrowing_is_off() -> None:
    assert one(1, 2, narrow_integers=False) == "Int64"
    assert one(2**63, narrow_integers=False) == "UInt64"


def test_nan_and_infinity_are_not_json_and_overflowing_floats_are_strings() -> None:
    result = analyze_ndjson(b'{"v": NaN}\n{"v": Infinity}\n{"v": 1}\n')
    assert result.skipped_rows == 2 and types_of(result) == {"v": "Int16"}
    analyzer = SchemaAnalyzer()
    analyzer.add_row({"v": float("inf")})  # a value given directly, not parsed
    assert types_of(analyzer.result()) == {"v": "String"}
    assert types_of(analyze_ndjson(b'{"v": 1e400}\n')) == {"v": "String"}


@pytest.mark.parametrize(("values", "expected"), [
    (("2024-05-01", "1970-01-01", "2149-06-06"), "Date"),
    (("2024-05-01", "2149-06-07"), "DateTime64(3)"),  # past DateTime's too
    (("2024-05-01 10:00:00", "2024-05-01T10:00:00Z"), "DateTime"),
    (("2024-05-01 10:00", "2024-05-01"), "DateTime"),
    (("2024-05-01T10:00:00+02:00", "2024-05-01T10:00:00-0530", "2024-05-01T10:00:00+01"),
     "DateTime"),
    (("2024-05-01T10:00:00.123Z", "2024-05-01 10:00:00"), "DateTime64(3)"),
    (("2024-05-01T10:00:00.1Z",), "DateTime64(3)"),
    (("2024-05-01 10:00:00.123456",), "DateTime64(6)"),
    (("2024-05-01 10:00:00.123456789",), "DateTime64(9)"),
    (("1969-12-31 23:59:59",), "DateTime64(3)"),  # before DateTime's epoch
    (("1960-01-01",), "DateTime64(3)"),
    (("1970-01-01T00:30:00+01:00",), "DateTime64(3)"),  # 1969 in UTC
    (("2200-01-01 00:00:00.5",), "DateTime64(3)"),
    (("2200-01-01 00:00:00.123456789",), "DateTime64(9)"),
    (("2263-01-01 00:00:00.123456789",), "String"),  # beyond Int64 ticks at scale 9
    (("1899-12-31 23:59:59",), "String"),
    (("2024-02-30",), "String"),
    (("2024-05-01 24:00:00",), "String"),
    (("2024-05-01T10:00:00+24:00",), "String"),
    (("2024-05-01", "soon"), "String"),
    ((" 2024-05-01",), "String"),
    (("20240501",), "String"),
    (("2024-05-01T10:00:00.",), "String"),
])
def test_date_and_time_strings(values: tuple[str, ...], expected: str) -> None:
    assert one(*values) == expected


def test_datetime64_off_for_clickhouse_18() -> None:
    assert one("2024-05-01T10:00:00.123Z", datetime64=False) == "String"
    assert one("1960-01-01 00:00:00", datetime64=False) == "String"
    assert one("2024-05-01T10:00:00Z", datetime64=False) == "DateTime"


def test_epoch_numbers_stay_numbers() -> None:
    assert one(1714557600, 1714557601) == "Int32"


# -- missing keys, nulls, mixed rows -------------------------------------------------------


def test_missing_keys_and_nulls_make_nullable_and_present_pct() -> None:
    result = analyze_ndjson(ndjson({"a": 1, "b": "x"}, {"a": None, "b": "y"}, {"b": "z"},
                                   {"a": 2, "b": "w", "c": None}))
    assert types_of(result) == {"a": "Nullable(Int16)", "b": "String",
                                "c": "Nullable(String)"}
    assert [c.present_pct for c in result.columns] == [50.0, 100.0, 0.0]
    assert [c.nullable for c in result.columns] == [True, False, True]


def test_mixed_rows_widen_to_string_or_float() -> None:
    types = infer({"a": 1, "b": 1, "c": "2024-01-01"}, {"a": 2.5, "b": "x", "c": 3})
    assert types == {"a": "Float64", "b": "String", "c": "String"}


def test_columns_keep_first_seen_order_and_non_objects_are_skipped() -> None:
    result = analyze_ndjson(b'{"z": 1}\n[1, 2]\n"text"\n{"a": 1, "z": 2}\nnot json\n\n  \n')
    assert [c.name for c in result.columns] == ["z", "a"]
    assert result.rows == 2 and result.skipped_rows == 3


# -- arrays ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "expected"), [
    (([1, 2], [3]), "Array(Int16)"),
    (([1, None],), "Array(Nullable(Int16))"),
    (([1], [2.5]), "Array(Float64)"),
    ((["a", "b"], []), "Array(String)"),
    (([], []), "Array(String)"),
    (([None],), "Array(Nullable(String))"),
    ((["2024-01-01", "2024-01-02"],), "Array(Date)"),
    (([True, False],), "Array(UInt8)"),
    (([[1, 2], [3]], [[]]), "Array(Array(Int16))"),
    (([[1], None],), "Array(Array(Int16))"),
    (([[["deep"]]],), "String"),
    (([{"x": 1}],), "String"),
    (([1, [2]],), "String"),
    (([1, "a", True],), "Array(String)"),  # scalars of several kinds: their text
    (([1], 2), "String"),
    (([1], {"x": 1}), "String"),
])
def test_array_types(values: tuple[object, ...], expected: str) -> None:
    assert one(*values) == expected


def test_arrays_are_never_nullable_and_end_their_path_in_selector() -> None:
    result = analyze_ndjson(ndjson({"tags": ["a"]}, {"tags": None}, {}))
    (column,) = result.columns
    assert (column.ch_type, column.jsonpath, column.present_pct) == \
        ("Array(String)", "$.tags[:]", pytest.approx(33.33))


# -- nested objects ------------------------------------------------------------------------


def test_nested_objects_become_leaf_columns_with_jsonpaths() -> None:
    result = analyze_ndjson(ndjson(
        {"user": {"id": 1, "geo": {"country": "ES"}}, "n": 1},
        {"user": {"id": 2}, "n": 2},
        {"user": None, "n": 3},
    ))
    assert [(c.name, c.ch_type, c.jsonpath) for c in result.columns] == [
        ("user_id", "Nullable(Int16)", "$.user.id"),
        ("user_geo_country", "Nullable(String)", "$.user.geo.country"),
        ("n", "Int16", "$.n"),
    ]


def test_object_and_scalar_at_one_key_is_one_string_column() -> None:
    result = analyze_ndjson(ndjson({"p": {"x": 1}}, {"p": "flat"}))
    assert [(c.name, c.ch_type, c.jsonpath) for c in result.columns] == \
        [("p", "String", "$.p")]


def test_empty_objects_only_are_one_string_column() -> None:
    assert infer({"p": {}}, {"p": {}}) == {"p": "String"}


def test_depth_bound_keeps_the_deeper_object_whole() -> None:
    row = {"a": {"b": {"c": {"d": 1}}}}
    assert infer(row, max_depth=2) == {"a_b": "String"}
    assert infer(row, max_depth=4) == {"a_b_c_d": "Int16"}
    deep: dict[str, Any] = {"leaf": 1}
    for level in range(40):
        deep = {f"k{level}": deep}
    result = analyze_ndjson(ndjson(deep))
    (column,) = result.columns
    assert column.ch_type == "String" and column.jsonpath.count(".") == 5


def test_width_bound_keeps_a_wide_object_whole() -> None:
    wide = {f"k{i}": i for i in range(50)}
    assert infer({"w": wide}, max_object_keys=49) == {"w": "String"}
    assert len(infer({"w": wide}, max_object_keys=50)) == 50


def test_column_bound_drops_later_keys_with_a_warning() -> None:
    result = analyze_ndjson(ndjson({f"k{i}": i for i in range(30)}), max_columns=10)
    assert [c.name for c in result.columns] == [f"k{i}" for i in range(10)]
    assert result.warnings and "more than 10 columns" in result.warnings[0]
    assert len(result.warnings) <= 20


def test_names_are_identifiers_and_unique_and_keys_get_safe_paths() -> None:
    result = analyze_ndjson(ndjson({
        "a b": 1, "a-b": 2, "a_b": 3, "9lives": 4, "é": 5, "c__error": 6,
        "dot.ted": 7, " pad": 8, "it's": 9, "br[0]": 10,
    }))
    assert [(c.name, c.jsonpath) for c in result.columns] == [
        ("a_b", "$.a b"), ("a_b_2", "$.a-b"), ("a_b_3", "$.a_b"), ("_9lives", "$.9lives"),
        ("_", "$.é"), ("c__error_2", "$.c__error"), ("dot_ted", "$['dot.ted']"),
        ("_pad", "$[' pad']"), ("it_s", "$.it's"), ("br_0_", "$['br[0]']"),
    ]
    parse_schema(render_schema(result.columns))  # every path and name is valid


def test_keys_no_datafile_path_can_hold_are_dropped_with_a_warning() -> None:
    result = analyze_ndjson(ndjson({"": 1, "a`b": 2, "a\\b": 3, "x.'y": 4, "nl\n": 5,
                                    "ok": 6}))
    assert [c.name for c in result.columns] == ["ok"]
    assert len(result.warnings) == 5


# -- CSV ---------------------------------------------------------------------------------


def test_csv_header_detected_as_clickhouse_does() -> None:
    result = analyze_csv(b"name,age,ts\nalice,3,2024-01-01 10:00:00\nbob,4,2024-01-02\n")
    assert result.header is True and result.rows == 2
    assert types_of(result) == {"name": "String", "age": "Int16", "ts": "DateTime"}
    assert all(c.jsonpath is None for c in result.columns)


@pytest.mark.parametrize("body", [
    b"alice,3\nbob,4\n",  # the first record has a number: data
    b"a,b\nc,d\n",  # every column is text: no telling, data
    b"name,age\n",  # one record: data
    b"name,\nalice,3\n",  # an empty field: data
    b"name,2024-01-01\nalice,2024-01-02\n",  # a date in the first record: data
])
def test_csv_without_header_names_columns_c1_c2(body: bytes) -> None:
    result = analyze_csv(body)
    assert result.header is False
    assert [c.name for c in result.columns][:2] == ["c1", "c2"]
    assert result.rows == body.count(b"\n")


def test_csv_header_can_be_forced_either_way() -> None:
    assert analyze_csv(b"a,b\nc,d\n", header=True).columns[0].name == "a"
    result = analyze_csv(b"name,age\nalice,3\n", header=False)
    assert types_of(result) == {"c1": "String", "c2": "String"}


def test_csv_values_nulls_and_quoting() -> None:
    result = analyze_csv(
        b'id,price,flag,zip,note,n\n'
        b'1,1.5,true,01234,"x, y",\n'
        b'2,2,false,01235,\\N,\n'
        b'3,-0.5e3,true,01236,"",7\n')
    assert types_of(result) == {"id": "Int16", "price": "Float64", "flag": "UInt8",
                                "zip": "String", "note": "Nullable(String)",
                                "n": "Nullable(Int16)"}
    assert result.preview[0] == ("1", "1.5", "true", "01234", "x, y", None)


def test_csv_quoted_empty_is_text_not_null() -> None:
    assert types_of(analyze_csv(b'a,b\n1,""\n2,3\n'))["b"] == "String"


def test_csv_records_split_like_the_parser_and_bad_ones_are_skipped() -> None:
    # A stray quote opens a quoted run to the end, as in the parser: the rest is one
    # bad record.
    result = analyze_csv(b'\xef\xbb\xbfk,v\r\n"a\nb",1\r\n\r\n"c",3\nbad"quote,2\n"d",4')
    assert result.header is True and result.rows == 2 and result.skipped_rows == 1
    assert result.preview == (("a\nb", "1"), ("c", "3"))


def test_csv_delimiter_and_ragged_records() -> None:
    result = analyze_csv(b"k;v\nx;1\ny;2;extra\n", delimiter=";")
    assert types_of(result) == {"k": "String", "v": "Int16", "c3": "Nullable(String)"}
    assert analyze_response(result)["dialect"] == {"delimiter": ";", "has_header": True}
    with pytest.raises(ValueError):
        analyze_csv(b"", delimiter='"')


def test_csv_rows_through_the_analyzer_api() -> None:
    analyzer = SchemaAnalyzer("csv")
    for row in (["day", "n"], ["2024-01-01", "1"], ["2024-01-02", None], ["2024-01-03", ""]):
        analyzer.add_row(row)
    result = analyzer.result()
    assert result.header is True
    assert types_of(result) == {"day": "Date", "n": "Nullable(Int16)"}
    with pytest.raises(TypeError):
        analyzer.add_row("a,b")


# -- bounds --------------------------------------------------------------------------------


def test_row_bound_ends_the_sample() -> None:
    analyzer = SchemaAnalyzer(max_rows=3)
    assert analyzer.add_row({"a": 1}) and analyzer.add_row({"a": 2})
    assert not analyzer.add_row({"a": 3})
    assert not analyzer.add_row({"a": "never seen"})
    result = analyzer.result()
    assert (result.rows, result.complete, types_of(result)) == (3, False, {"a": "Int16"})


def test_byte_bound_ends_a_huge_sample_early() -> None:
    body = ndjson(*({"i": i, "s": "x" * 100} for i in range(200_000)))
    result = analyze_ndjson(body, max_bytes=64 << 10)
    assert not result.complete and 400 < result.rows < 700
    assert result.bytes >= 64 << 10
    assert analyze_ndjson(body[:100_000], final=False, max_rows=10**9).skipped_rows == 0


def test_preview_keeps_the_first_rows() -> None:
    result = analyze_ndjson(ndjson(*({"o": {"k": [i]}, "p": {"q": i}} for i in range(20))),
                            max_depth=1)
    assert len(result.preview) == 10
    assert result.preview[3] == ('{"k":[3]}', '{"q":3}')


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        SchemaAnalyzer("parquet")
    with pytest.raises(ValueError):
        SchemaAnalyzer(max_rows=0)
    with pytest.raises(ValueError):
        SchemaAnalyzer("ndjson", header=True)


# -- renderers ------------------------------------------------------------------------------


def test_analyze_response_has_tinybirds_shape() -> None:
    result = analyze_ndjson(ndjson({"ts": "2024-01-01 00:00:00", "a": {"b": [1]}},
                                   {"ts": "2024-01-02 00:00:00"}))
    body = analyze_response(result)
    assert body["analysis"]["columns"] == [
        {"path": "$.ts", "recommended_type": "DateTime", "present_pct": 100.0, "name": "ts"},
        {"path": "$.a.b[:]", "recommended_type": "Array(Int16)", "present_pct": 50.0,
         "name": "a_b"},
    ]
    assert body["analysis"]["schema"] == \
        "ts DateTime `json:$.ts`, a_b Array(Int16) `json:$.a.b[:]`"
    assert body["preview"]["meta"] == [{"name": "ts", "type": "DateTime"},
                                       {"name": "a_b", "type": "Array(Int16)"}]
    assert body["preview"]["data"] == [{"ts": "2024-01-01 00:00:00", "a_b": [1]},
                                       {"ts": "2024-01-02 00:00:00", "a_b": None}]
    assert body["preview"]["rows"] == 2
    assert body["preview"]["statistics"]["rows_read"] == 2
    assert "dialect" not in body
    json.dumps(body)


@pytest.mark.parametrize(("row", "key"), [
    ({"n": 1, "s": "x", "d": "2024-01-01", "t": "2024-01-01 00:00:00"}, "d"),
    ({"n": 1, "s": "x", "t": "2024-01-01 00:00:00.5"}, "t"),
    ({"s": "x", "f": 1.5, "n": 1}, "f"),
    ({"a": [1], "s": "x"}, "s"),
    ({"a": [1], "o": None}, None),
])
def test_sorting_key_suggestion(row: dict[str, Any], key: str | None) -> None:
    columns = analyze_ndjson(ndjson(row)).columns
    engine = suggest_engine(columns)
    assert (engine.name, engine.sorting_key) == ("MergeTree", key)


def test_nullable_columns_are_never_the_sorting_key() -> None:
    columns = analyze_ndjson(ndjson({"t": "2024-01-01", "n": 1}, {"n": 2})).columns
    assert suggest_engine(columns).sorting_key == "n"


def test_render_datasource_without_columns_raises() -> None:
    with pytest.raises(InferenceError):
        render_datasource(analyze_ndjson(b""))


def test_schema_line_parses_with_the_api_schema_parser() -> None:
    result = analyze_ndjson(ndjson({"a": 1, "b": {"c": ["x"]}, "d": None}))
    specs = parse_schema(render_schema(result.columns))
    assert [(s.name, s.ch_type, s.jsonpath) for s in specs] == \
        [(c.name, c.ch_type, c.jsonpath) for c in result.columns]


# -- deterministic generated inputs -----------------------------------------------------------


def generated_rows(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def scalar(kind: str) -> object:
        if kind == "int":
            return rng.choice([rng.randint(-100, 100), rng.randint(-2**40, 2**40)])
        if kind == "float":
            return rng.choice([rng.random() * 1e6, rng.randint(0, 9)])
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "date":
            return f"20{rng.randint(0, 38):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if kind == "datetime":
            sep = rng.choice("T ")
            zone = rng.choice(["", "Z", "+02:00", "-0330"])
            return f"2024-{rng.randint(1, 12):02d}-10{sep}{rng.randint(0, 23):02d}:" \
                   f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}{zone}"
        if kind == "dt64":
            return f"2024-03-10 10:00:00.{rng.randint(0, 999999):06d}"
        return rng.choice(["", "x", "ünï", "a,b", 'q"uote', "line\nbreak", "2024"])

    kinds = ["int", "float", "bool", "date", "datetime", "dt64", "str"]
    schema = {f"k{i}": rng.choice(kinds) for i in range(12)}
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for key, kind in schema.items():
            roll = rng.random()
            if roll < 0.1:
                continue  # missing
            if roll < 0.15:
                row[key] = None
            elif roll < 0.2 and kind != "str":
                row[key] = scalar(rng.choice(kinds))  # a stray type
            elif key in ("k0", "k1"):
                row[key] = [scalar(kind) for _ in range(rng.randint(0, 3))]
            elif key == "k2":
                row[key] = {"inner": scalar(kind), "more": {"x": scalar("int")}}
            else:
                row[key] = scalar(kind)
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_generated_inputs_are_deterministic(seed: int) -> None:
    body = ndjson(*generated_rows(seed, 300))
    first = analyze_ndjson(body)
    again = analyze_ndjson(body)
    assert first.columns == again.columns and first.preview == again.preview
    assert render_datasource(first) == render_datasource(again)


# -- end to end: the rendered datafile parses, and chDB takes the sample -------------------


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSink]:
    # chDB hosts one engine per process: one sink for the module's tables.
    embedded = EmbeddedSink(str(tmp_path_factory.mktemp("infer") / "chdb"))
    try:
        yield embedded
    finally:
        embedded.close()


_tables = iter(range(10**6))


def create_from(result: Inference, sink: EmbeddedSink, tmp_path: Path) -> DataSource:
    name = f"inferred_{next(_tables)}"
    path = tmp_path / "datasources" / f"{name}.datasource"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_datasource(result))
    datasource = parse_datasource(path)
    assert [(c.name, c.ch_type) for c in datasource.columns] == \
        [(c.name, c.ch_type) for c in result.columns]
    assert datasource.engine == suggest_engine(result.columns)
    sink.execute(create_table_sql(datasource, sink.database))
    return datasource


def ingest(datasource: DataSource, body: bytes, sink: EmbeddedSink, fmt: str,
           implementation: str) -> int:
    """Feed ``body`` through the gateway's parser; insert; return the stored row count."""
    columns = [c for c in datasource.columns if c.path is not None]
    if fmt == "ndjson":
        make = parser.NDJSONParserPy if implementation == "py" else parser.NDJSONParser
        rows = make(columns)
    else:
        make = parser.CSVParserPy if implementation == "py" else parser.CSVParser
        rows = make(columns)
    rows.feed(body)
    rows.finish()
    block = rows.take_block()
    assert [(e.code, e.column, e.value, e.line[:200]) for e in block.errors] == []
    sink.insert(datasource.name, encode_block(columns, block))
    result = sink.query(f"SELECT count() FROM `{datasource.name}`")
    return int(result.rows[0][0])


IMPLEMENTATIONS = ["py", "c"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_rule_round_trips_through_the_ndjson_parser(
        sink: EmbeddedSink, tmp_path: Path, implementation: str) -> None:
    rows = [
        {"ts": "2024-05-01T10:00:00.123Z", "day": "2024-05-01", "at": "2024-05-01 10:00",
         "old": "1960-01-01 00:00:00", "i16": 1, "i32": 70000, "i64": 2**40, "u64": 2**63,
         "f": 1, "b": True, "bi": True, "s": "x", "mixed": 1, "tags": ["a", "b"],
         "nums": [1, None], "grid": [[1], [2, 3]], "empty": [], "bools": [True],
         "user": {"id": 1, "geo": {"cc": "ES"}}, "blob": {"k": 1}, "nothing": None,
         "objs": [{"a": 1}], "big": 2**64, "dt6": "2024-05-01 10:00:00.123456",
         "mixarr": [1, "a", 2.5, True]},
        {"ts": "2024-05-01 10:00:01", "day": "2024-05-02", "at": "2024-05-02",
         "old": "2299-12-31 23:59:59", "i16": -32768, "i32": -5, "i64": -1, "u64": 0,
         "f": 2.5, "b": False, "bi": 200, "s": "", "mixed": "one", "tags": [],
         "nums": [], "grid": [[]], "empty": [], "bools": [],
         "user": {"id": 2}, "blob": "flat", "objs": [], "big": 1, "mixarr": [],
         "dt6": "2024-05-01T10:00:00+02:00"},
        {"ts": "2024-05-01T12:00:00+02:00", "day": "2149-06-06", "at": "2024-05-02T00:00:00Z",
         "old": "1900-01-01", "i16": 32767, "i32": 2**31 - 1, "i64": -(2**63), "u64": 2**64 - 1,
         "f": -0.5e-3, "b": True, "bi": False, "s": "é\t\"", "mixed": 2.5, "tags": None,
         "grid": None, "user": None, "blob": {"nested": [1, {"x": None}]}, "nothing": None,
         "big": -1, "objs": None, "dt6": "1999-01-01 00:00:00.5", "mixarr": ["a"]},
    ]
    body = ndjson(*rows)
    result = analyze_ndjson(body)
    assert types_of(result) == {
        "ts": "DateTime64(3)", "day": "Date", "at": "DateTime", "old": "DateTime64(3)",
        "i16": "Int16", "i32": "Int32", "i64": "Int64", "u64": "UInt64", "f": "Float64",
        "b": "UInt8", "bi": "Int16", "s": "String", "mixed": "String",
        "tags": "Array(String)", "nums": "Array(Nullable(Int16))",
        "grid": "Array(Array(Int16))", "empty": "Array(String)", "bools": "Array(UInt8)",
        "user_id": "Nullable(Int16)", "user_geo_cc": "Nullable(String)", "blob": "String",
        "nothing": "Nullable(String)", "objs": "Nullable(String)", "big": "String",
        "dt6": "DateTime64(6)", "mixarr": "Array(String)",
    }
    datasource = create_from(result, sink, tmp_path)
    assert ingest(datasource, body, sink, "ndjson", implementation) == 3
    by_i16 = {row[0]: row[1:] for row in sink.query(
        f"SELECT i16, user_geo_cc, blob, big, toString(dt6) FROM `{datasource.name}`").rows}
    assert by_i16[1] == ("ES", '{"k":1}', "18446744073709551616", "2024-05-01 10:00:00.123456")
    assert by_i16[-32768] == (None, "flat", "1", "2024-05-01 08:00:00.000000")
    assert by_i16[32767][:3] == (None, '{"nested":[1,{"x":null}]}', "-1")


@pytest.mark.parametrize("seed", range(4))
def test_generated_samples_are_stored_without_quarantine(
        sink: EmbeddedSink, tmp_path: Path, seed: int) -> None:
    body = ndjson(*generated_rows(seed, 300))
    result = analyze_ndjson(body)
    datasource = create_from(result, sink, tmp_path)
    assert ingest(datasource, body, sink, "ndjson", IMPLEMENTATIONS[seed % 2]) == 300


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_csv_with_header_round_trips_through_the_csv_parser(
        sink: EmbeddedSink, tmp_path: Path, implementation: str) -> None:
    body = (b"id,price,flag,day,at,note,n\n"
            b'1,1.5,true,2024-01-01,2024-01-01 10:00:00,"x, ""y""",\n'
            b"2,2,false,2024-01-02,2024-01-01T10:00:00.25Z,\\N,7\n"
            b'-3,-0.5e3,true,2024-01-03,2024-01-02,"multi\nline",-1\n')
    result = analyze_csv(body)
    assert result.header is True
    assert types_of(result) == {"id": "Int16", "price": "Float64", "flag": "UInt8",
                                "day": "Date", "at": "DateTime64(3)",
                                "note": "Nullable(String)", "n": "Nullable(Int16)"}
    datasource = create_from(result, sink, tmp_path)
    assert ingest(datasource, body, sink, "csv", implementation) == 3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_csv_without_header_round_trips_through_the_csv_parser(
        sink: EmbeddedSink, tmp_path: Path, implementation: str) -> None:
    body = b"alice,3,2024-01-01\nbob,,2024-01-02 00:00:00\n"
    result = analyze_csv(body)
    assert result.header is False
    assert types_of(result) == {"c1": "String", "c2": "Nullable(Int16)", "c3": "DateTime"}
    datasource = create_from(result, sink, tmp_path)
    assert ingest(datasource, body, sink, "csv", implementation) == 2
