"""CREATE TABLE statements for data sources and their quarantine tables.

The statements are valid on ClickHouse 18.16 and on current releases (chDB) as long as
the data source uses only what 18.16 knows: column ``CODEC`` and ``TTL`` need 19.x+, and
``LowCardinality`` needs ``allow_experimental_low_cardinality_type = 1`` before 19.x.
Every fragment was checked when the :class:`~tinyingest.datafiles.DataSource` was built
(:func:`~tinyingest.datafiles.build_engine`), so rendering does not validate again.
"""

from __future__ import annotations

from tinyingest.datafiles import QUARANTINE_COLUMNS, DataSource, EngineSpec
from tinyingest.schema import ColumnSpec

__all__ = [
    "quote_identifier",
    "column_sql",
    "engine_sql",
    "create_table_sql",
    "create_quarantine_sql",
]


def quote_identifier(name: str) -> str:
    """Backquote a name for ClickHouse.

    >>> quote_identifier("a`b")
    '`a\\\\`b`'
    """
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def column_sql(column: ColumnSpec) -> str:
    """```name` Type [DEFAULT|MATERIALIZED|ALIAS expr] [CODEC(...)]``."""
    parts = [quote_identifier(column.name), column.ch_type]
    if column.default_kind is not None and column.default_expr is not None:
        parts += [column.default_kind, column.default_expr]
    if column.codec is not None:
        parts.append(f"CODEC({column.codec})")
    return " ".join(parts)


def _wrapped(fragment: str) -> str:
    return fragment if fragment.replace(" ", "").lower() == "tuple()" else f"({fragment})"


def engine_sql(engine: EngineSpec) -> str:
    """``Engine(params) PARTITION BY ... ORDER BY ... SETTINGS ...`` (after ``ENGINE =``).

    >>> engine_sql(EngineSpec(partition_key="toDate(ts)", sorting_key="a, ts"))
    'MergeTree() PARTITION BY (toDate(ts)) ORDER BY (a, ts)'
    """
    if engine.name == "Null":
        return "Null"
    params: list[str] = []
    if engine.name == "ReplacingMergeTree":
        params = [quote_identifier(name) for name in (engine.ver, engine.is_deleted) if name]
    elif engine.name == "SummingMergeTree" and engine.columns:
        params = ["(" + ", ".join(quote_identifier(name) for name in engine.columns) + ")"]
    elif engine.name == "CollapsingMergeTree" and engine.sign:
        params = [quote_identifier(engine.sign)]
    elif engine.name == "VersionedCollapsingMergeTree" and engine.sign and engine.version:
        params = [quote_identifier(engine.sign), quote_identifier(engine.version)]
    parts = [f"{engine.name}({', '.join(params)})"]
    if engine.partition_key:
        parts.append(f"PARTITION BY {_wrapped(engine.partition_key)}")
    parts.append(f"ORDER BY {_wrapped(engine.sorting_key or 'tuple()')}")
    if engine.primary_key:
        parts.append(f"PRIMARY KEY {_wrapped(engine.primary_key)}")
    if engine.sampling_key:
        parts.append(f"SAMPLE BY {_wrapped(engine.sampling_key)}")
    if engine.ttl:
        # Unwrapped so several rules ("a + INTERVAL 1 DAY, b + ...") stay valid.
        parts.append(f"TTL {engine.ttl}")
    if engine.settings:
        parts.append(f"SETTINGS {engine.settings}")
    return " ".join(parts)


def create_table_sql(datasource: DataSource, database: str) -> str:
    """``CREATE TABLE IF NOT EXISTS `db`.`name` (...) ENGINE = ...`` for a data source."""
    lines = [column_sql(column) for column in datasource.columns]
    lines += [
        f"INDEX {quote_identifier(index.name)} {index.expr} TYPE {index.type}"
        f" GRANULARITY {index.granularity}"
        for index in datasource.indexes
    ]
    body = ",\n    ".join(lines)
    table = quote_identifier(datasource.name)
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(database)}.{table}"
        f" (\n    {body}\n) ENGINE = {engine_sql(datasource.engine)}"
    )


def create_quarantine_sql(datasource: DataSource, database: str) -> str:
    """``CREATE TABLE IF NOT EXISTS `db`.`<name>_quarantine` ...`` (api.md section 3).

    Columns: ``c__error_column``, ``c__error``, ``c__import_id``, every column of the data
    source as ``Nullable(String)``, ``insertion_date DateTime``; MergeTree ordered by
    ``insertion_date``.
    """
    lines = [f"{quote_identifier(name)} {ch_type}" for name, ch_type in QUARANTINE_COLUMNS]
    lines += [
        f"{quote_identifier(name)} Nullable(String)" for name in datasource.quarantine_columns
    ]
    lines.append("`insertion_date` DateTime")
    body = ",\n    ".join(lines)
    table = quote_identifier(datasource.quarantine_name)
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(database)}.{table}"
        f" (\n    {body}\n) ENGINE = MergeTree() ORDER BY `insertion_date`"
    )
