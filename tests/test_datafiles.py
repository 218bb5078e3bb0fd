"""Datafile parsing (datasources, pipes, SCHEMA) and the DDL built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyingest.datafiles import (
    DatafileError,
    DataSource,
    EngineSpec,
    build_engine,
    check_fragment,
    load_project,
    parse_datasource,
    parse_pipe,
    parse_schema,
    write_example_project,
)
from tinyingest.ddl import create_quarantine_sql, create_table_sql, engine_sql, quote_identifier
from tinyingest.schema import TypeCode


def write(directory: Path, relative: str, text: str) -> Path:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def datasource(tmp_path: Path, text: str, name: str = "ds") -> DataSource:
    return parse_datasource(write(tmp_path, f"datasources/{name}.datasource", text))


def error_of(call: object, *args: object) -> DatafileError:
    assert callable(call)
    with pytest.raises(DatafileError) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------------------
# .datasource


def test_example_project_loads() -> None:
    project = load_project(Path(__file__).parent.parent / "tinyingest" / "example")
    events = project.datasources["events"]
    assert [c.name for c in events.columns] == [
        "timestamp", "user_id", "event", "value", "session_id", "payload",
    ]
    assert [c.jsonpath for c in events.columns] == [
        "$.timestamp", "$.user_id", "$.event", "$.value", "$.session.id", "$.payload",
    ]
    assert events.columns[4].path == ("session", "id")
    assert events.columns[2].low_cardinality and events.columns[2].type_code is TypeCode.STRING
    assert events.columns[5].nullable
    assert events.engine == EngineSpec(
        "MergeTree", partition_key="toYYYYMM(timestamp)", sorting_key="event, timestamp"
    )
    assert events.tokens == (("tracker_append", "APPEND"), ("dashboard_read", "READ"))
    pipe = project.pipes["top_events"]
    assert pipe.endpoint is not None
    assert pipe.endpoint.sql.startswith("%\nSELECT")
    assert "{{Int(limit, 10)}}" in pipe.endpoint.sql


def test_keywords_are_case_insensitive_and_values_unquoted(tmp_path: Path) -> None:
    ds = datasource(
        tmp_path,
        "# a comment\n"
        'description "Page views"\n'
        "schema >\n"
        "    a UInt64\n"
        "\n"
        "Engine 'MergeTree'\n"
        'engine_sorting_key "a"\n'
        "Token 'reader' read\n",
    )
    assert ds.name == "ds"
    assert ds.description == "Page views"
    assert ds.engine.sorting_key == "a"
    assert ds.tokens == (("reader", "READ"),)


def test_multiline_description_is_dedented(tmp_path: Path) -> None:
    ds = datasource(
        tmp_path,
        "DESCRIPTION >\n    first line\n      second line\n\nSCHEMA >\n    a UInt8\n",
    )
    assert ds.description == "first line\n  second line"


def test_environment_variables_are_not_substituted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "leaked")
    ds = datasource(
        tmp_path,
        "DESCRIPTION uses $SECRET and ${SECRET}\n"
        "SCHEMA >\n    a String DEFAULT '$SECRET'\n",
    )
    assert ds.description == "uses $SECRET and ${SECRET}"
    assert ds.columns[0].default_expr == "'$SECRET'"


def test_unknown_keyword_reports_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.datasource", "SCHEMA >\n    a UInt8\n\nBOGUS 1\n")
    err = error_of(parse_datasource, path)
    assert str(err) == f"{path}:4: unknown keyword BOGUS"
    assert (err.file, err.line) == (str(path), 4)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("SETTINGS a=1", "SETTINGS is not a datafile keyword"),
        ("KAFKA_TOPIC t", "connectors are not supported"),
        ("ENGINE_FOO x", "unknown keyword ENGINE_FOO"),
        ("ENGINE MergeTree", "ENGINE given twice (first at line 3)"),
    ],
)
def test_rejected_datasource_lines(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, "x.datasource", f"SCHEMA >\n    a UInt8\nENGINE MergeTree\n{line}\n")
    err = error_of(parse_datasource, path)
    assert err.line == 4
    assert reason in err.reason


def test_missing_schema(tmp_path: Path) -> None:
    err = error_of(parse_datasource, write(tmp_path, "x.datasource", "DESCRIPTION hi\n"))
    assert err.reason == "no SCHEMA"


def test_bad_file_name(tmp_path: Path) -> None:
    err = error_of(parse_datasource, write(tmp_path, "bad-name.datasource", "SCHEMA >\n a UInt8\n"))
    assert "bad-name" in err.reason


def test_version_suffixes_the_name(tmp_path: Path) -> None:
    assert datasource(tmp_path, "VERSION 2\nSCHEMA >\n    a UInt8\n").name == "ds__v2"


def test_token_scope_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "x.datasource", 'SCHEMA >\n    a UInt8\nTOKEN "t" WRITE\n')
    assert "READ or APPEND" in error_of(parse_datasource, path).reason


def test_ignored_keywords(tmp_path: Path) -> None:
    ds = datasource(
        tmp_path,
        'TAGS "team=data, web"\nSHARED_WITH >\n    other_ws\nSCHEMA >\n    a UInt8\n',
    )
    assert ds.column_names == ("a",)


def test_indexes_block_and_schema_index_lines(tmp_path: Path) -> None:
    ds = datasource(
        tmp_path,
        "SCHEMA >\n"
        "    a UInt64,\n"
        "    s String,\n"
        "    INDEX idx_s s TYPE bloom_filter GRANULARITY 4\n"
        "INDEXES >\n"
        "    idx_a a TYPE minmax GRANULARITY 1,\n"
        "    idx_b lower(s) TYPE set(100) GRANULARITY 2\n",
    )
    assert [(i.name, i.expr, i.type, i.granularity) for i in ds.indexes] == [
        ("idx_s", "s", "bloom_filter", 4),
        ("idx_a", "a", "minmax", 1),
        ("idx_b", "lower(s)", "set(100)", 2),
    ]
    assert "INDEX `idx_b` lower(s) TYPE set(100) GRANULARITY 2" in create_table_sql(ds, "db")


def test_include_substitutes_only_its_arguments(tmp_path: Path) -> None:
    write(tmp_path, "includes/cols.incl", "SCHEMA >\n    `$col` UInt8,\n    other String\n")
    write(tmp_path, "datasources/inc.datasource", 'INCLUDE "../includes/cols.incl" col=abc\n')
    project = load_project(tmp_path)
    assert project.datasources["inc"].column_names == ("abc", "other")


def test_include_outside_the_project_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "secret.incl", "DESCRIPTION x\n")
    write(tmp_path, "project/datasources/inc.datasource", 'INCLUDE "../../secret.incl"\n')
    err = error_of(load_project, tmp_path / "project")
    assert err.line == 1 and "outside the project" in err.reason


def test_error_inside_include_names_the_included_file(tmp_path: Path) -> None:
    incl = write(tmp_path, "includes/bad.incl", "\nNOPE 1\n")
    text = 'SCHEMA >\n    a UInt8\nINCLUDE "includes/bad.incl"\n'
    write(tmp_path, "datasources/inc.datasource", text)
    err = error_of(load_project, tmp_path)
    assert (err.file, err.line) == (str(incl.resolve()), 2)


# ---------------------------------------------------------------------------
# SCHEMA (api.md 2.4)


def test_columns_without_jsonpath_read_their_own_key() -> None:
    a, b, c, d = parse_schema(
        "a UInt64, b String `json:$.x.y`, c DateTime DEFAULT now(), d String `json:$.d` DEFAULT 'n'"
    )
    assert (a.jsonpath, a.path) == ("$.a", ("a",))
    assert (b.jsonpath, b.path) == ("$.x.y", ("x", "y"))
    assert (c.jsonpath, c.path, c.default_kind, c.default_expr) == (None, None, "DEFAULT", "now()")
    assert (d.path, d.default_text) == (("d",), b"n")


def test_dotted_backquoted_name_reads_a_flat_key() -> None:
    (column,) = parse_schema("`foo.bar` UInt64")
    assert column.name == "foo.bar"
    assert column.path == ("foo.bar",)


def test_commas_inside_parens_quotes_and_comments_do_not_split() -> None:
    columns = parse_schema(
        "-- leading comment\n"
        "`a` String DEFAULT concat('x,y', \"z\"), -- trailing comment, with comma\n"
        "`b` UInt8 DEFAULT if(1, 2, 3)\n"
        "-- last comment\n"
    )
    assert [(c.name, c.default_expr) for c in columns] == [
        ("a", "concat('x,y', \"z\")"),
        ("b", "if(1, 2, 3)"),
    ]


def test_index_lines_are_tolerated_by_parse_schema() -> None:
    columns = parse_schema("a UInt8, INDEX i a TYPE minmax GRANULARITY 1, b String")
    assert [c.name for c in columns] == ["a", "b"]


@pytest.mark.parametrize("name", ["a/b", "a^b", "a#b", "$a", "1a"])
def test_unquoted_names_with_symbols_are_syntax_errors(name: str) -> None:
    err = error_of(parse_schema, f"ok UInt8,\n{name} UInt8")
    assert err.line == 2
    assert "wrong value, please check the schema syntax" in err.reason


def test_symbols_are_fine_in_backquoted_names() -> None:
    assert parse_schema("`a/b` UInt8")[0].name == "a/b"


def test_nullable_and_low_cardinality() -> None:
    a, b = parse_schema("a Nullable(Int32), b LowCardinality(Nullable(String))")
    assert a.nullable and a.type_code is TypeCode.INT32
    assert b.nullable and b.low_cardinality
    err = error_of(parse_schema, "c Nullable(LowCardinality(String))")
    assert "use LowCardinality(Nullable(...))" in err.reason


def test_codec_after_materialized_is_fine_but_not_the_reverse() -> None:
    (column,) = parse_schema("a UInt64 MATERIALIZED 1 CODEC(ZSTD(1))")
    assert (column.default_kind, column.default_expr, column.codec) == (
        "MATERIALIZED", "1", "ZSTD(1)",
    )
    assert column.path is None and not column.ingested
    err = error_of(parse_schema, "a UInt64 CODEC(ZSTD(1)) MATERIALIZED 1")
    assert "MATERIALIZED must come before CODEC" in err.reason


def test_type_may_be_omitted_with_a_default() -> None:
    columns = parse_schema("a DEFAULT 0, b DEFAULT 'x', c DEFAULT now(), d DEFAULT -300")
    assert [c.ch_type for c in columns] == ["UInt8", "String", "DateTime", "Int16"]
    err = error_of(parse_schema, "e DEFAULT lower('x')")
    assert "give its type" in err.reason
    assert "has no type" in error_of(parse_schema, "f").reason


def test_jsonpaths_seen_in_the_wild() -> None:
    whole, dashed = parse_schema("r String `json:$`, d String `json:$.a--2`")
    assert whole.path == ()
    assert dashed.path == ("a--2",)


def test_unsupported_type_reports_its_line() -> None:
    err = error_of(parse_schema, "a UInt8,\n\nb Tuple(Array(UInt8))")
    assert err.line == 3
    assert "Tuple(Array(UInt8))" in err.reason
    assert str(err).startswith("schema:3: ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a UInt8, a String", "duplicate column 'a'"),
        ("a UInt8,, b UInt8", "stray ','"),
        ("a UInt8 TTL now()", "column TTL is not supported"),
        ("a UInt8 DEFAULT 1 `json:$.a`", "must come right after the type"),
        ("a UInt8 DEFAULT (1", "unbalanced"),
        ("a String DEFAULT 'x", "unterminated"),
        ("a UInt8 DEFAULT 1; DROP TABLE t", "must not contain ';'"),
        ("a UInt8 garbage", "unexpected"),
        ("c__error String", "reserved"),
        ("insertion_date DateTime", "reserved"),
        ("", "no columns"),
    ],
)
def test_schema_errors(text: str, reason: str) -> None:
    assert reason in error_of(parse_schema, text).reason


def test_multiline_column_error_reports_its_first_line() -> None:
    err = error_of(parse_schema, "a Tuple(\n  Array(UInt8)\n)")
    assert err.line == 1


def test_trailing_comma_is_tolerated() -> None:
    assert len(parse_schema("a UInt8,\nb UInt8,\n")) == 2


def test_schema_error_line_is_the_file_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.datasource",
        "DESCRIPTION d\n\nSCHEMA >\n    a UInt8,\n    # comment\n    b Bogus\n",
    )
    err = error_of(parse_datasource, path)
    assert str(err).startswith(f"{path}:6: column 'b'")


# ---------------------------------------------------------------------------
# Engines


def test_unknown_engine_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "x.datasource", "SCHEMA >\n    a UInt8\nENGINE Log\n")
    err = error_of(parse_datasource, path)
    assert err.line == 3
    assert "unknown engine 'Log'" in err.reason and "ReplacingMergeTree" in err.reason


@pytest.mark.parametrize(
    ("engine", "options", "reason"),
    [
        ("ReplacingMergeTree", {}, "requires engine_sorting_key"),
        ("ReplacingMergeTree", {"sorting_key": "tuple()"}, "not tuple()"),
        ("ReplacingMergeTree", {"sorting_key": "a", "ver": "nope"}, "not a column"),
        ("ReplacingMergeTree", {"sorting_key": "a", "is_deleted": "a"}, "needs engine_ver"),
        ("CollapsingMergeTree", {"sorting_key": "a"}, "requires engine_sign"),
        ("CollapsingMergeTree", {"sign": "a"}, "requires engine_sorting_key"),
        ("VersionedCollapsingMergeTree", {"sign": "a"}, "requires engine_version"),
        ("SummingMergeTree", {"columns": "a, zz"}, "'zz' is not a column"),
        ("MergeTree", {"ver": "a"}, "not a parameter of MergeTree"),
        ("Null", {"sorting_key": "a"}, "takes no options"),
        ("MergeTree", {"sorting_key": "a; DROP TABLE x"}, "';'"),
        ("MergeTree", {"sorting_key": "a FORMAT JSON"}, "FORMAT"),
        ("MergeTree", {"sorting_key": "a) SETTINGS x = 1, (a"}, "unbalanced"),
        ("MergeTree", {"partition_key": "(a"}, "unbalanced"),
        ("MergeTree", {"partition_key": "'a"}, "unterminated"),
        ("MergeTree", {"ttl": "a -- comment"}, "comments"),
        ("MergeTree", {"primary_key": "(SELECT a FROM other.t)"}, "SELECT"),
        ("MergeTree", {"settings": "index_granularity = 32; DROP"}, "settings must be"),
        ("MergeTree", {"settings": "index_granularity = (1)"}, "settings must be"),
    ],
)
def test_engine_errors(engine: str, options: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError) as info:
        build_engine(engine, options, ["a", "b"])
    assert reason in str(info.value)


def test_engine_options_ok() -> None:
    spec = build_engine(
        "versionedcollapsingmergetree",
        {"sign": "a", "version": "`b`", "settings": "index_granularity = 32, x = 'y'"},
        ["a", "b"],
    )
    assert (spec.name, spec.sign, spec.version) == ("VersionedCollapsingMergeTree", "a", "b")
    assert spec.settings == "index_granularity = 32, x = 'y'"
    assert check_fragment("concat(';', `format`)") == "concat(';', `format`)"


def test_engine_error_points_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.datasource",
        "SCHEMA >\n    a UInt8\nENGINE MergeTree\nENGINE_SORTING_KEY a;\n",
    )
    assert error_of(parse_datasource, path).line == 4


# ---------------------------------------------------------------------------
# DDL


def test_engine_sql_matches_tinybird_doctest() -> None:
    spec = build_engine(
        "MergeTree",
        {
            "partition_key": "toDate(timestamp)",
            "sorting_key": "local_date, cod_store",
            "settings": "index_granularity = 32",
            "ttl": "toDate(local_date) + INTERVAL 1 DAY",
        },
        ["timestamp", "local_date", "cod_store"],
    )
    assert engine_sql(spec) == (
        "MergeTree() PARTITION BY (toDate(timestamp)) ORDER BY (local_date, cod_store)"
        " TTL toDate(local_date) + INTERVAL 1 DAY SETTINGS index_granularity = 32"
    )


@pytest.mark.parametrize(
    ("engine", "options", "expected"),
    [
        ("MergeTree", {}, "MergeTree() ORDER BY tuple()"),
        ("MergeTree", {"sorting_key": "tuple()"}, "MergeTree() ORDER BY tuple()"),
        (
            "ReplacingMergeTree",
            {"sorting_key": "a", "ver": "b", "is_deleted": "c"},
            "ReplacingMergeTree(`b`, `c`) ORDER BY (a)",
        ),
        ("SummingMergeTree", {"columns": "b, c"}, "SummingMergeTree((`b`, `c`)) ORDER BY tuple()"),
        ("AggregatingMergeTree", {"sorting_key": "a"}, "AggregatingMergeTree() ORDER BY (a)"),
        (
            "CollapsingMergeTree",
            {"sign": "c", "sorting_key": "a", "primary_key": "a", "sampling_key": "a"},
            "CollapsingMergeTree(`c`) ORDER BY (a) PRIMARY KEY (a) SAMPLE BY (a)",
        ),
        (
            "VersionedCollapsingMergeTree",
            {"sign": "c", "version": "b"},
            "VersionedCollapsingMergeTree(`c`, `b`) ORDER BY tuple()",
        ),
        ("null", {}, "Null"),
    ],
)
def test_engine_sql(engine: str, options: dict[str, str], expected: str) -> None:
    assert engine_sql(build_engine(engine, options, ["a", "b", "c"])) == expected


def test_create_table_sql(tmp_path: Path) -> None:
    ds = datasource(
        tmp_path,
        "SCHEMA >\n"
        "    `ts` DateTime `json:$.t`,\n"
        "    `a``b` String DEFAULT 'x' CODEC(ZSTD(1)),\n"
        "    m UInt64 MATERIALIZED 1,\n"
        "    al UInt64 ALIAS m + 1\n"
        "ENGINE_PARTITION_KEY toYYYYMM(ts)\n"
        'ENGINE_SORTING_KEY "ts"\n',
        name="t",
    )
    assert create_table_sql(ds, "db") == (
        "CREATE TABLE IF NOT EXISTS `db`.`t` (\n"
        "    `ts` DateTime,\n"
        "    `a\\`b` String DEFAULT 'x' CODEC(ZSTD(1)),\n"
        "    `m` UInt64 MATERIALIZED 1,\n"
        "    `al` UInt64 ALIAS m + 1\n"
        ") ENGINE = MergeTree() PARTITION BY (toYYYYMM(ts)) ORDER BY (ts)"
    )


def test_create_quarantine_sql(tmp_path: Path) -> None:
    ds = datasource(tmp_path, "SCHEMA >\n    a UInt8,\n    `b c` DateTime DEFAULT now()\n", "t")
    assert ds.quarantine_name == "t_quarantine"
    assert ds.quarantine_columns == ("a", "b c")
    assert create_quarantine_sql(ds, "db") == (
        "CREATE TABLE IF NOT EXISTS `db`.`t_quarantine` (\n"
        "    `c__error_column` Array(String),\n"
        "    `c__error` Array(String),\n"
        "    `c__import_id` Nullable(String),\n"
        "    `c__raw` Nullable(String),\n"
        "    `a` Nullable(String),\n"
        "    `b c` Nullable(String),\n"
        "    `insertion_date` DateTime\n"
        ") ENGINE = MergeTree() ORDER BY `insertion_date`"
    )


def test_quote_identifier_escapes() -> None:
    assert quote_identifier("a`b\\c") == "`a\\`b\\\\c`"


# ---------------------------------------------------------------------------
# .pipe


PIPE = """\
DESCRIPTION Top actions

TOKEN "dashboard_read" READ

NODE filtered
DESCRIPTION >
    rows in the window
SQL >
    %
    SELECT action, ts FROM page_views
WHERE ts >= {{DateTime64(start, '2024-01-01 00:00:00.000')}}

NODE endpoint
type ENDPOINT
SQL >
    SELECT action, count() AS hits FROM filtered
    GROUP BY action
"""


def test_pipe_nodes(tmp_path: Path) -> None:
    pipe = parse_pipe(write(tmp_path, "p.pipe", PIPE))
    assert pipe.name == "p"
    assert pipe.description == "Top actions"
    assert pipe.tokens == (("dashboard_read", "READ"),)
    filtered, endpoint = pipe.nodes
    assert filtered.description == "rows in the window"
    assert filtered.type == "standard"
    # An unindented line that is not a keyword stays in the SQL block.
    assert filtered.sql == (
        "%\n    SELECT action, ts FROM page_views\n"
        "WHERE ts >= {{DateTime64(start, '2024-01-01 00:00:00.000')}}"
    )
    assert endpoint.type == "endpoint"
    assert endpoint.sql == "SELECT action, count() AS hits FROM filtered\nGROUP BY action"
    assert pipe.endpoint is endpoint
    assert pipe.node("filtered") is filtered


def test_last_node_is_the_endpoint_by_default(tmp_path: Path) -> None:
    text = "NODE a\nSQL SELECT 1\nNODE b\nSQL >\n  SELECT 2\n"
    pipe = parse_pipe(write(tmp_path, "p.pipe", text))
    assert pipe.endpoint is not None and pipe.endpoint.name == "b"
    assert pipe.nodes[0].sql == "SELECT 1"


def test_pipe_query_limits(tmp_path: Path) -> None:
    text = "QUERY_MAX_ROWS 1000\nQUERY_TIMEOUT 2.5\nNODE a\nSQL SELECT 1\n"
    pipe = parse_pipe(write(tmp_path, "p.pipe", text))
    assert (pipe.query_max_rows, pipe.query_timeout) == (1000, 2.5)
    plain = parse_pipe(write(tmp_path, "q.pipe", "NODE a\nSQL SELECT 1\n"))
    assert (plain.query_max_rows, plain.query_timeout) == (None, None)


def test_materialized_pipe_has_no_endpoint(tmp_path: Path) -> None:
    write(tmp_path, "datasources/target.datasource", "SCHEMA >\n    n UInt64\n")
    write(
        tmp_path,
        "pipes/mv.pipe",
        "NODE m\nSQL >\n    SELECT count() AS n FROM x\nTYPE materialized\nDATASOURCE target\n",
    )
    pipe = load_project(tmp_path).pipes["mv"]
    assert pipe.nodes[0].datasource == "target"
    assert pipe.endpoint is None


def test_copy_node(tmp_path: Path) -> None:
    pipe = parse_pipe(
        write(
            tmp_path,
            "c.pipe",
            "NODE c\nSQL SELECT 1\nTYPE COPY\nTARGET_DATASOURCE t\n"
            "COPY_SCHEDULE @on-demand\nCOPY_MODE Replace\n",
        )
    )
    node = pipe.nodes[0]
    assert (node.type, node.datasource, node.copy_schedule, node.copy_mode) == (
        "copy", "t", "@on-demand", "replace",
    )


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("SQL SELECT 1\n", 1, "SQL must follow a NODE"),
        ("NODE a\nTYPE weird\nSQL SELECT 1\n", 2, "TYPE must be one of"),
        ("NODE a\nSQL SELECT 1\nNODE a\nSQL SELECT 2\n", 3, "duplicate node 'a'"),
        ("NODE a\nNODE b\nSQL SELECT 1\n", 1, "node 'a' has no SQL"),
        ("NODE a\nSQL SELECT 1\nTYPE materialized\n", 1, "needs DATASOURCE"),
        ("NODE a\nSQL SELECT 1\nSQL SELECT 2\n", 3, "SQL given twice"),
        ("NODE a\nSQL SELECT 1\nENGINE MergeTree\n", 3, "in a pipe is not supported"),
        ("NODE a\nSQL SELECT 1\nEXPORT_SERVICE s3\n", 3, "sinks are not supported"),
        ('NODE a\nSQL SELECT 1\nTOKEN "t" APPEND\n', 3, "TOKEN scope must be READ"),
        ("DESCRIPTION only\n", 1, "the pipe has no NODE"),
        ("DESCRIPTION d\nQUERY_MAX_ROWS many\nNODE a\nSQL SELECT 1\n", 2,
         "QUERY_MAX_ROWS must be a whole number of rows above 0, not 'many'"),
        ("QUERY_MAX_ROWS 0\nNODE a\nSQL SELECT 1\n", 1, "above 0, not '0'"),
        ("QUERY_MAX_ROWS 2.5\nNODE a\nSQL SELECT 1\n", 1, "whole number"),
        ("QUERY_MAX_ROWS 5\nQUERY_MAX_ROWS 6\nNODE a\nSQL SELECT 1\n", 2, "given twice"),
        ("QUERY_TIMEOUT -1\nNODE a\nSQL SELECT 1\n", 1,
         "QUERY_TIMEOUT must be a number of seconds above 0, not '-1'"),
        ("NODE a\nSQL SELECT 1\nQUERY_TIMEOUT 5\n", 3, "must come before the first NODE"),
        (
            "NODE a\nTYPE endpoint\nSQL SELECT 1\nNODE b\nTYPE endpoint\nSQL SELECT 2\n",
            1,
            "more than one endpoint",
        ),
    ],
)
def test_pipe_errors(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, "p.pipe", text)
    err = error_of(parse_pipe, path)
    assert (err.file, err.line) == (str(path), line)
    assert reason in err.reason


# ---------------------------------------------------------------------------
# Project


def test_materialized_target_must_exist(tmp_path: Path) -> None:
    path = write(
        tmp_path, "pipes/mv.pipe", "NODE m\nSQL SELECT 1\nTYPE materialized\nDATASOURCE nope\n"
    )
    err = error_of(load_project, tmp_path)
    assert str(err) == f"{path}:4: node 'm' targets unknown data source 'nope'"


def test_names_are_unique_across_resources(tmp_path: Path) -> None:
    write(tmp_path, "datasources/x.datasource", "SCHEMA >\n    a UInt8\n")
    write(tmp_path, "pipes/x.pipe", "NODE n\nSQL SELECT 1\n")
    assert "already used" in error_of(load_project, tmp_path).reason


def test_empty_and_missing_project(tmp_path: Path) -> None:
    project = load_project(tmp_path)
    assert project.datasources == {} and project.pipes == {}
    assert error_of(load_project, tmp_path / "missing").reason == "not a directory"


def test_write_example_project_refuses_to_overwrite(tmp_path: Path) -> None:
    written = write_example_project(tmp_path / "proj")
    relative = sorted(str(path.relative_to(tmp_path / "proj")) for path in written)
    assert relative == ["README.md", "datasources/events.datasource", "events.ndjson",
                        "pipes/top_events.pipe"]
    assert set(load_project(tmp_path / "proj").datasources) == {"events"}
    readme = tmp_path / "proj" / "README.md"
    readme.write_text("mine")
    (tmp_path / "proj" / "pipes" / "top_events.pipe").unlink()
    with pytest.raises(FileExistsError):
        write_example_project(tmp_path / "proj")
    assert readme.read_text() == "mine"
    assert not (tmp_path / "proj" / "pipes" / "top_events.pipe").exists()
