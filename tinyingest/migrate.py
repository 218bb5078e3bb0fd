"""A data source's datafile against its live tables, at startup.

``CREATE TABLE IF NOT EXISTS`` keeps a table that exists, whatever its datafile now says;
rows encoded for the datafile would then be refused by the table *and* its quarantine.
So before anything is created, :func:`read_live` reads each data source's table and
quarantine table (``system.tables`` and ``DESCRIBE TABLE``, which ClickHouse 18.16 and
chDB both answer) and :func:`plan` compares them with the datafile:

* a column in the datafile the table lacks is added, to the table
  (``ALTER TABLE ... ADD COLUMN `c` Type [DEFAULT ...] AFTER `previous```) and to the
  quarantine table (as ``Nullable(String)``); rows stored before get its DEFAULT;
* a column whose type changed, a column the datafile no longer has, another engine or
  sorting key: :class:`SchemaMismatch`, naming the file and the column; the gateway does
  not start and changes nothing (those need a migration of the data, by hand).

Column order, DEFAULT expressions and codecs of existing columns are not compared.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from tinyingest import ddl
from tinyingest.datafiles import QUARANTINE_COLUMNS, DataSource
from tinyingest.schema import ColumnSpec, SchemaError, parse_type
from tinyingest.sinks import Sink

__all__ = ["LiveTable", "Plan", "SchemaMismatch", "plan", "read_live"]


class SchemaMismatch(Exception):
    """The datafiles and the live tables differ in a way the gateway will not apply."""


@dataclass(frozen=True, slots=True)
class LiveTable:
    """What ClickHouse has: the engine, the sorting key as it formats it, the columns."""

    engine: str
    sorting_key: str | None  # None: not known (not compared)
    columns: tuple[tuple[str, str], ...]  # (name, type), in table order


@dataclass(frozen=True, slots=True)
class Plan:
    """ALTER statements to run, and the problems that forbid them."""

    statements: tuple[str, ...] = ()
    #: Human-readable lines, one per applied change (logged at INFO).
    changes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def read_live(sink: Sink, database: str, names: tuple[str, ...]
              ) -> dict[str, LiveTable]:
    """The tables among ``names`` that exist in ``database`` (missing ones are absent)."""
    if not names:
        return {}
    listed = ", ".join(_literal(name) for name in names)
    found = sink.query(
        f"SELECT name, engine, sorting_key FROM system.tables "
        f"WHERE database = {_literal(database)} AND name IN ({listed})",
        readonly=True)
    live: dict[str, LiveTable] = {}
    for row in found.rows:
        name, engine, sorting_key = (_text(value) for value in row[:3])
        described = sink.query(
            f"DESCRIBE TABLE {ddl.quote_identifier(database)}.{ddl.quote_identifier(name)}",
            readonly=True)
        live[name] = LiveTable(
            engine=engine, sorting_key=sorting_key,
            columns=tuple((_text(r[0]), _text(r[1])) for r in described.rows))
    return live


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _same_type(declared: str, live: str) -> bool:
    if re.sub(r"\s+", "", declared) == re.sub(r"\s+", "", live):
        return True
    try:
        # Spellings ClickHouse normalizes (Decimal(10,2) / Decimal(10, 2), ...).
        return dataclasses.replace(parse_type(declared), ch_type="") == \
            dataclasses.replace(parse_type(live), ch_type="")
    except SchemaError:
        return False


def _key(text: str | None) -> str:
    """A sorting key as comparable text: no blanks or backquotes, no outer brackets."""
    key = re.sub(r"[\s`]+", "", text or "")
    while key.startswith("(") and key.endswith(")") and _wraps(key):
        key = key[1:-1]
    return "" if key == "tuple()" else key


def _wraps(key: str) -> bool:
    depth = 0
    for index, char in enumerate(key):
        depth += 1 if char == "(" else -1 if char == ")" else 0
        if depth == 0 and index < len(key) - 1:
            return False
    return True


def plan(datasource: DataSource, database: str, table: LiveTable | None,
         quarantine: LiveTable | None) -> Plan:
    """What to do to ``datasource``'s tables (None: the table does not exist yet)."""
    where = datasource.path or f"data source '{datasource.name}'"
    statements: list[str] = []
    changes: list[str] = []
    problems: list[str] = []
    if table is not None:
        if table.engine != datasource.engine.name:
            problems.append(f"{where}: ENGINE is {datasource.engine.name}, but table "
                            f"'{datasource.name}' has engine {table.engine}")
        elif table.sorting_key is not None and datasource.engine.name != "Null" and \
                _key(table.sorting_key) != _key(datasource.engine.sorting_key):
            problems.append(f"{where}: ENGINE_SORTING_KEY is "
                            f"{datasource.engine.sorting_key or 'tuple()'!r}, but table "
                            f"'{datasource.name}' is ordered by {table.sorting_key or 'tuple()'!r}")
        live = dict(table.columns)
        declared = {column.name for column in datasource.columns}
        for column in datasource.columns:
            if column.name in live and not _same_type(column.ch_type, live[column.name]):
                problems.append(f"{where}: column '{column.name}' has type {column.ch_type}, "
                                f"but table '{datasource.name}' has it as "
                                f"{live[column.name]}")
        for name, ch_type in table.columns:
            if name not in declared:
                problems.append(f"{where}: column '{name}' ({ch_type}) of table "
                                f"'{datasource.name}' is not in the datafile")
        if not problems:
            statements += _additions(datasource, database, datasource.name,
                                     [name for name, _ in table.columns], changes,
                                     ddl.column_sql)
    if quarantine is not None and not problems:
        statements += _additions(
            datasource, database, datasource.quarantine_name,
            [name for name, _ in quarantine.columns], changes,
            lambda column: f"{ddl.quote_identifier(column.name)} Nullable(String)",
            first_after=QUARANTINE_COLUMNS[-1][0])
    return Plan(tuple(statements), tuple(changes), tuple(problems))


def _additions(datasource: DataSource, database: str, table: str, live: list[str],
               changes: list[str], render: Callable[[ColumnSpec], str],
               first_after: str | None = None) -> list[str]:
    present = set(live)
    statements: list[str] = []
    previous = first_after if first_after in present else None
    for column in datasource.columns:
        if column.name not in present:
            sql = (f"ALTER TABLE {ddl.quote_identifier(database)}."
                   f"{ddl.quote_identifier(table)} ADD COLUMN {render(column)}")
            # No FIRST before ClickHouse 20: a first column goes last instead.
            if previous is not None:
                sql += f" AFTER {ddl.quote_identifier(previous)}"
            statements.append(sql)
            changes.append(f"{datasource.path or datasource.name}: adding column "
                           f"'{column.name}' to table '{table}': {sql}")
            present.add(column.name)
        previous = column.name
    return statements
