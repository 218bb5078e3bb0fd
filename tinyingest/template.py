"""Tinybird's SQL template language, re-implemented as a sandbox (api.md section 5).

A pipe node's SQL is a template when its first non-blank character is ``%``
(:func:`is_template`). The syntax is Tinybird's (a fork of Tornado's templates):

* ``{{ expr }}`` inserts a value, escaped for ClickHouse (see *Escaping* below);
* ``{% if c %}..{% elif c %}..{% else %}..{% end %}``, ``{% for x in e %}..{% end %}``,
  ``{% set x = e %}``, ``{% break %}``, ``{% continue %}``, ``{# comment #}``,
  ``{% comment .. %}`` and ``{% whitespace .. %}`` (both ignored);
* ``{{!`` / ``{%!`` / ``{#!`` emit ``{{`` / ``{%`` / ``{#`` literally.

Unlike Tinybird, a template is never turned into Python code. It is parsed once
(:func:`compile_template`, cached per text) into a small tree of our own nodes whose
expressions are :mod:`ast` trees checked against **one** whitelist, for ``{{ }}`` and
``{% %}`` alike, and run by a tiny evaluator (no ``eval``/``exec``/``compile``):

* constants (str, int, float, bool, None), names (not ``__dunder__``), list, tuple, set
  and dict literals, subscripts and slices, f-strings without format specs;
* unary ``-``/``+``/``not``; binary ``+ - *`` (no ``/``, ``//``, ``%``, ``**``);
  comparisons ``== != < <= > >= in not in``; ``and``/``or``; ``a if c else b``;
* calls to the functions of :data:`FUNCTIONS` only, and to the methods ``split join
  replace strip lower upper`` of ``str`` values and ``get`` of ``dict`` values. No other
  attribute access, no lambdas, comprehensions, walrus, starred or ``**`` arguments.

Anything else, and the statements ``import from extends include raw module apply block
autoescape while try``, fail at load with :class:`TemplateSyntaxError`
(``Template Syntax Error: <reason> at line <n>``). A template also cannot use ``format``
or ``q`` as a variable (Tinybird's rule: both are request options, not parameters).

Rendering (:meth:`Template.render`) takes the request parameters (always strings, or
lists of strings for repeated keys) and returns :class:`Rendered`. Every problem raises
:class:`TemplateError`, whose ``status`` (400 unless ``error()``/``custom_error()`` says
otherwise) and ``body`` are what an HTTP handler should send, in Tinybird's words:
``Template Syntax Error: Error validating '300' to type Int8``.

Escaping
--------

A ``str`` result is emitted as ``'...'`` with these escapes (:func:`sql_string`):
NUL ``\\0``, CR ``\\r``, LF ``\\n``, TAB ``\\t``, BS ``\\b``, ``"`` ``\\"``, ``'`` ``\\'``,
backslash ``\\\\``, backquote ``\\```; every other character is sent as is. Identifiers
(``column``, ``columns``, ``symbol``, ``table``) are wrapped in backquotes with the same
escapes (:func:`sql_identifier`). Given an allowlist (``columns=`` of :meth:`Template.render`;
:mod:`tinyingest.pipes` passes the columns of the tables the query may read), ``column``,
``columns`` and ``symbol`` accept only those names and their own defaults: anything else
(``*``, ``a`), b``, ``system.users``, a 10k-character name) is a 400 ``invalid column ...``,
and escaping stays as defence in depth. Two deliberate differences from Tinybird, both measured
on ClickHouse 18.16.1 and chDB 26.9 (``tests/test_template_clickhouse.py`` keeps them
honest):

* ``%`` is **not** escaped. Tinybird emits ``\\%``, which 18.16 reads as ``%`` (one
  character) but chDB reads as ``\\%`` (two): the same pipe would return different rows
  on the two backends. Unescaped, ``100%`` is ``100%`` on both, byte for byte; the price
  is that ``LIKE {{String(p)}}`` treats a ``%`` in ``p`` as a wildcard, as ClickHouse
  always does with a literal ``%``. ``sql_unescape(x, '%')`` is accepted and changes
  nothing.
* 0x1A is emitted as ``\\x1A``, not Tinybird's ``\\z``: 18.16 reads ``'\\z'`` as ``z``
  and chDB as ``\\z``; both read ``\\x1A`` as 0x1A.

Validated numbers render as plain literals, not as Tinybird's ``toInt32('5')``: ClickHouse
18.16 accepts only a literal after ``LIMIT``/``OFFSET`` and as an aggregate function's
parameter, so Tinybird's usual ``LIMIT {{Int32(limit, 10)}}`` must become ``LIMIT 10``.
A negative one is parenthesized (``(-3)``: ``10-{{Int32(x)}}`` must not become the comment
``10--3``); NaN, infinities and integers past 64 bits keep ``toT('...')`` (see
:func:`_number_literal`, which also explains Float32 and subnormals). ``Boolean`` renders as ``0``/``1``,
arrays as ``[1,-2]`` / ``['a','b']``. The literal's ClickHouse type is the narrowest that
holds the value (``10`` is a UInt8): comparisons and arithmetic see the same value, but a
bare ``SELECT {{Int32(x)}} AS n`` reports UInt8 in ``meta``.

>>> compile_template("% SELECT {{String(x)}}, {{Int8(n, 1)}}").render({"x": "it's"}).sql
" SELECT 'it\\\\'s', 1"
"""

from __future__ import annotations

import ast
import datetime as _dt
import functools
import json
import math
import re
import struct
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias

__all__ = [
    "FORBIDDEN_STATEMENTS",
    "FUNCTIONS",
    "MAX_ITERATIONS",
    "MAX_RENDER_SECONDS",
    "MAX_OUTPUT_CHARS",
    "Param",
    "ParamValue",
    "Rendered",
    "SQLValue",
    "Template",
    "TemplateError",
    "TemplateSyntaxError",
    "compile_template",
    "is_template",
    "render_sql",
    "sql_identifier",
    "sql_string",
    "template_parameters",
]

#: A request parameter: one value, or the values of a repeated key.
ParamValue: TypeAlias = "str | list[str]"

#: Statements that fail at load.
FORBIDDEN_STATEMENTS = frozenset(
    {"import", "from", "extends", "include", "raw", "module", "apply", "block",
     "autoescape", "while", "try", "except", "finally"}
)

#: Rendered SQL and any string/list value may not grow past this many characters.
MAX_OUTPUT_CHARS = 16 << 20
#: Total ``{% for %}`` iterations of one render.
MAX_ITERATIONS = 100_000
#: CPU seconds one render may take: each step is bounded in size, but 100,000 loop
#: steps over megabyte strings would hold the event loop for seconds.
MAX_RENDER_SECONDS = 1.0
#: Integers computed by a template stay within +-2**256 (Int256's range).
_MAX_INT = 1 << 256


# ---------------------------------------------------------------------------
# Errors


class TemplateError(Exception):
    """A template cannot be rendered with these parameters.

    :ivar status: HTTP status to answer with (400, or the code given to ``error()`` /
        ``custom_error()``).
    :ivar body: the JSON error body: ``{"error": message}``, or ``custom_error``'s dict.
    """

    def __init__(self, message: str, status: int = 400,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body: dict[str, Any] = body if body is not None else {"error": message}


class TemplateSyntaxError(TemplateError):
    """The template text itself is invalid (raised by :func:`compile_template`).

    ``str(err)`` is ``"Template Syntax Error: <reason> at line <n>"``.
    """

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(f"Template Syntax Error: {reason} at line {line}")
        self.reason = reason
        self.line = line


def _fail(reason: str) -> NoReturn:
    raise TemplateError(f"Template Syntax Error: {reason}")


# ---------------------------------------------------------------------------
# Escaping

_STRING_ESCAPES = {
    "\0": "\\0", "\r": "\\r", "\n": "\\n", "\t": "\\t", "\b": "\\b", "\x1a": "\\x1A",
    '"': '\\"', "'": "\\'", "\\": "\\\\", "`": "\\`",
}
_ESCAPE_TABLE = str.maketrans(_STRING_ESCAPES)


def sql_string(value: str) -> str:
    """``value`` as a ClickHouse string literal that reads back byte for byte.

    >>> sql_string("a'b\\\\")
    "'a\\\\'b\\\\\\\\'"
    """
    return "'" + value.translate(_ESCAPE_TABLE) + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a backquoted ClickHouse identifier (same escapes as strings).

    >>> sql_identifier("a`b")
    '`a\\\\`b`'
    """
    return "`" + name.translate(_ESCAPE_TABLE) + "`"


# ---------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class SQLValue:
    """A value typed by a template function: ``sql`` is what ``{{ }}`` emits, ``value``
    the Python value that ``{% %}`` logic and operators see."""

    sql: str
    value: Any

    def __bool__(self) -> bool:
        return bool(self.value)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, SQLValue) else value


@dataclass(frozen=True, slots=True)
class _Var:
    """The first argument of a parameter function: the name (if it was a bare name), the
    value, and whether the parameter (or a ``{% set %}`` variable) exists."""

    name: str | None
    value: Any
    present: bool


class _Missing:
    """What an undefined name evaluates to outside parameter functions."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "None"

    def __bool__(self) -> bool:
        return False


_MISSING = _Missing()
#: What max_threads(), hints and a neutralised error() emit.
_NOTHING = SQLValue("", None)


# ---------------------------------------------------------------------------
# Template tree

Expr: TypeAlias = ast.expr


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Output:
    expr: Expr
    source: str
    line: int


@dataclass(frozen=True, slots=True)
class _If:
    branches: tuple[tuple[Expr, tuple[_Node, ...]], ...]
    orelse: tuple[_Node, ...]
    line: int


@dataclass(frozen=True, slots=True)
class _For:
    target: Expr
    iterable: Expr
    body: tuple[_Node, ...]
    line: int


@dataclass(frozen=True, slots=True)
class _Set:
    target: Expr
    value: Expr
    line: int


@dataclass(frozen=True, slots=True)
class _Jump:
    kind: str  # "break" | "continue"
    line: int


_Node: TypeAlias = "_Text | _Output | _If | _For | _Set | _Jump"


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


# ---------------------------------------------------------------------------
# Parameters (static extraction)


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter a template reads, as found statically (for OpenAPI and listings).

    ``type`` is the type function's name (``Int32``, ``Array(String)``, ``column``), or
    ``String`` for a bare ``{{name}}`` / ``defined(name)``. The metadata keywords are
    copied when they are constants.
    """

    name: str
    type: str = "String"
    default: Any = None
    description: str | None = None
    required: bool = False
    example: Any = None
    enum: tuple[Any, ...] | None = None
    format: str | None = None
    min: Any = None
    max: Any = None
    #: ``defined=False`` was given: a missing value renders as nothing (inside sql_and).
    optional: bool = False

    @property
    def has_default(self) -> bool:
        return self.default is not None


# ---------------------------------------------------------------------------
# Functions
#
# Every function takes (ctx, args, kwargs). Parameter functions get their first
# argument as a _Var (see _PARAM_FUNCTIONS); everything else gets plain values.

_Fn: TypeAlias = Callable[["_Context", list[Any], dict[str, Any]], Any]

_INT_RANGES: dict[str, tuple[int, int]] = {}
for _bits in (8, 16, 32, 64, 128, 256):
    _INT_RANGES[f"Int{_bits}"] = (-(1 << (_bits - 1)), (1 << (_bits - 1)) - 1)
    _INT_RANGES[f"UInt{_bits}"] = (0, (1 << _bits) - 1)
_INT_ALIASES = {"Int": "Int32", "Integer": "Int32"}
_FLOAT_TYPES = ("Float32", "Float64")
_SCALAR_TYPES = (
    tuple(_INT_RANGES) + tuple(_INT_ALIASES) + _FLOAT_TYPES
    + ("String", "Boolean", "Date", "DateTime", "DateTime64")
)

_SIGNED = re.compile(r"[+-]?[0-9]+", re.ASCII)
_UNSIGNED = re.compile(r"\+?[0-9]+", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_DATETIME = re.compile(
    r"[0-9]{4}.[0-9]{2}.[0-9]{2}(?:T|\s)[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"|[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{4} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}",
    re.ASCII,
)
_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)

_TYPE_SIGNATURE = ("name", "default", "description", "required", "example", "enum",
                   "format", "defined", "min", "max")
_ARRAY_SIGNATURE = ("name", "type", "default", "description", "required", "example",
                    "enum", "format", "defined")
_TEST_VALUES: dict[str, str] = {
    "String": "__no_value__", "Date": "2019-01-01", "DateTime": "2019-01-01 00:00:00",
    "DateTime64": "2019-01-01 00:00:00.000", "Boolean": "0",
}


def _bind(fname: str, args: list[Any], kwargs: dict[str, Any], names: Sequence[str],
          required: int = 1) -> dict[str, Any]:
    if len(args) > len(names):
        _fail(f"{fname}() takes at most {len(names)} positional arguments")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            _fail(f"{fname}() got an unexpected keyword argument '{key}'")
        if key in bound:
            _fail(f"{fname}() got multiple values for argument '{key}'")
        bound[key] = value
    for name in names[:required]:
        if name not in bound:
            _fail(f"{fname}() missing required argument '{name}'")
    return bound


def _as_var(value: Any) -> _Var:
    if isinstance(value, _Var):
        return value
    plain = _plain(value)
    return _Var(None, plain, plain is not None and plain is not _MISSING)


def _scalar_text(value: Any) -> str:
    """One request value as text: the last of a repeated key (as Tornado's get_argument)."""
    value = _plain(value)
    if isinstance(value, list):
        if not value:
            return ""
        value = value[-1]
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, str) else str(value)


def _shown(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def _convert(type_name: str, text: str, error: Callable[[], NoReturn],
             low: Any = None, high: Any = None) -> SQLValue:
    """Validate ``text`` as ``type_name`` and render it (the scalar path of every type)."""
    if type_name == "String":
        return SQLValue(sql_string(text), text)
    if type_name == "Boolean":
        flag = bool(text) and text.lower() not in ("0", "false")
        return SQLValue("1" if flag else "0", flag)
    if type_name == "Date":
        if not _DATE.fullmatch(text):
            error()
        return SQLValue(sql_string(text), text)
    if type_name in ("DateTime", "DateTime64"):
        # Tinybird checks a prefix only; the whole value is still one escaped literal.
        if not _DATETIME.match(text):
            error()
        return SQLValue(sql_string(text), text)
    if type_name in _FLOAT_TYPES:
        if "_" in text:
            error()
        try:
            number = float(text)
        except ValueError:
            error()
        if (low is not None and number < low) or (high is not None and number > high):
            error()
        return SQLValue(_sign_safe(_number_literal(type_name, number)), number)
    ch_type = _INT_ALIASES.get(type_name, type_name)
    lowest, highest = _INT_RANGES[ch_type]
    pattern = _SIGNED if lowest < 0 else _UNSIGNED
    if len(text) > 100 or not pattern.fullmatch(text):
        error()
    integer = int(text)
    if not lowest <= integer <= highest:
        error()
    if (low is not None and integer < low) or (high is not None and integer > high):
        error()
    return SQLValue(_sign_safe(_number_literal(ch_type, integer)), integer)


_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


def _float32(number: float) -> float:
    """``number`` rounded to Float32 as ``toFloat32`` does (inf past Float32's range)."""
    try:
        rounded: float = struct.unpack("<f", struct.pack("<f", number))[0]
    except OverflowError:
        return math.copysign(math.inf, number)
    return rounded


def _number_literal(type_name: str, number: int | float) -> str:
    """A validated number of ClickHouse type ``type_name`` as SQL.

    A plain literal (``10``, ``-3``, ``1.5``, ``1e+300``) whenever ClickHouse reads it back
    as exactly this value on both backends, because 18.16 accepts nothing else after
    ``LIMIT``/``OFFSET``/``LIMIT n BY`` or as an aggregate function's parameter
    (``quantile(0.9)``). It is also exact where Tinybird's ``toFloat64('...')`` is not:
    18.16 reads about one double in four from text one unit off, but a literal exactly.
    Integers outside Int64/UInt64 (a plain literal would be read as a Float64), NaN and
    infinities (``nan`` could be a column name) keep Tinybird's ``toT('...')``. 18.16
    refuses a subnormal literal: that one becomes an exact product of two normal ones,
    ``(x * 2**600 * 2**-600)``.

    A Float32 is emitted as the Float64 literal of its Float32 value, e.g. 0.1 as
    ``0.10000000149011612``: then ``f32_column = {{Float32(x)}}`` matches the rows that
    ``toFloat32('0.1')`` matches (the literal's type is Float64, its value the same).
    """
    if isinstance(number, float):
        value = _float32(number) if type_name == "Float32" else number
        if not math.isfinite(value):
            return f"to{type_name}('{number!r}')"
        if value != 0 and abs(value) < sys.float_info.min:
            return f"({math.ldexp(value, 600)!r} * {math.ldexp(1.0, -600)!r})"
        return repr(value)
    if _INT64_MIN <= number <= _UINT64_MAX:
        return str(number)
    return f"to{type_name}('{number}')"


def _sign_safe(literal: str) -> str:
    """``-3`` as ``(-3)``: after a ``-`` in the template (``10-{{Int(x)}}``) a bare
    negative literal would start a ``--`` comment and hide the rest of the line."""
    return f"({literal})" if literal.startswith("-") else literal


def _typed(type_name: str) -> _Fn:
    def fn(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
        bound = _bind(type_name, args, kwargs, _TYPE_SIGNATURE)
        var = _as_var(bound["name"])
        default = _plain(bound.get("default"))
        if var.present and var.value is not None:
            text = _scalar_text(var.value)
        elif default is not None:
            text = _scalar_text(default)
        elif type_name == "Boolean":
            text = "0"
        elif not bound.get("defined", True):
            return None
        elif ctx.test_mode:
            text = _TEST_VALUES.get(type_name, "0")
        else:
            ctx.required_error(var.name)

        def error() -> NoReturn:
            _fail(f"Error validating '{_shown(text)}' to type {type_name}")

        return _convert(type_name, text, error, _plain(bound.get("min")),
                        _plain(bound.get("max")))

    return fn


def _array(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
    bound = _bind("Array", args, kwargs, _ARRAY_SIGNATURE)
    var = _as_var(bound["name"])
    type_name = _plain(bound.get("type", "String"))
    if type_name not in _SCALAR_TYPES:
        _fail(f"Array() type must be one of {', '.join(_SCALAR_TYPES)}, not {type_name!r}")
    value = var.value if var.present and var.value is not None else _plain(bound.get("default"))
    if value is None:
        if not bound.get("defined", True):
            return None
        if not ctx.test_mode:
            ctx.required_error(var.name)
        value = [_TEST_VALUES.get(type_name, "0")] * 2
    items: list[Any]
    if isinstance(value, (list, tuple)):
        items = [_scalar_text(item) for item in value]
        raw = ",".join(items)
    else:
        raw = _scalar_text(value)
        items = raw.split(",") if raw else []
    parts: list[str] = []
    values: list[Any] = []
    for index, item in enumerate(items):
        text = item if type_name in ("String", "Date", "DateTime", "DateTime64") \
            else item.strip()

        def error() -> NoReturn:
            _fail(f"Error validating [{_shown(raw)}][{index}] ({_shown(item)}) "
                  f"to type {type_name}")

        converted = _convert(type_name, text, error)
        values.append(converted.value)
        if isinstance(converted.value, (int, float)) and not isinstance(converted.value, bool):
            # After "[" or ",": a negative literal needs no parentheses here.
            parts.append(_number_literal(_INT_ALIASES.get(type_name, type_name),
                                         converted.value))
        else:
            parts.append(converted.sql)
    return SQLValue("[" + ",".join(parts) + "]", values)


def _defined(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> bool:
    bound = _bind("defined", args, kwargs, ("name",))
    var = _as_var(bound["name"])
    return var.present and var.value is not None


def _identifier_of(fname: str, var: _Var, default: Any) -> str:
    value = var.value if var.present and var.value is not None else _plain(default)
    text = _scalar_text(value) if value is not None else ""
    if not text:
        _fail(f"{fname}() needs a non-empty name")
    if len(text) > 1024:
        if fname != "table":
            raise TemplateError(f"invalid column '{_shown(text)}': {fname}() names are at "
                                "most 1024 characters")
        _fail(f"{fname}() name is longer than 1024 characters")
    return text


def _default_names(default: Any) -> set[str]:
    """The names a ``column``/``columns``/``symbol`` default gives (the pipe author's)."""
    value = _plain(default)
    if value is None:
        return set()
    raw = ",".join(map(_scalar_text, value)) if isinstance(value, (list, tuple)) \
        else _scalar_text(value)
    return {raw.strip()} | {part.strip() for part in raw.split(",")}


def _check_identifier(ctx: _Context, fname: str, name: str, default: Any) -> None:
    """E3: an identifier from a parameter must be a column the SQL may read, or the
    default the pipe's author wrote; escaping stays as defence in depth."""
    if ctx.columns is None or name in ctx.columns or name in _default_names(default):
        return
    raise TemplateError(f"invalid column '{_shown(name)}': {fname}() accepts only the "
                        "columns of the data sources this query may read")


def _column(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
    bound = _bind("column", args, kwargs, ("name", "default"))
    if _plain(bound.get("default")) is None:
        _fail("Missing column() default value, use "
              "`column(column_name, 'default_column_name')`")
    # Unlike Tinybird, "a.b" is not split into `a`.`b`: one backquoted name still reaches
    # a Nested or JSON sub-column, and a parameter cannot name another table's column.
    name = _identifier_of("column", _as_var(bound["name"]), bound["default"])
    _check_identifier(ctx, "column", name, bound["default"])
    return SQLValue(sql_identifier(name), name)


def _columns(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
    bound = _bind("columns", args, kwargs, ("name", "default", "fn"))
    if _plain(bound.get("default")) is None:
        _fail("Missing columns() default value, use "
              "`columns(column_names, 'default_column_name')`")
    var = _as_var(bound["name"])
    value = var.value if var.present and var.value is not None else _plain(bound["default"])
    raw = ",".join(map(_scalar_text, value)) if isinstance(value, (list, tuple)) \
        else _scalar_text(value)
    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        _fail("columns() needs at least one name")
    for name in names:
        if len(name) > 1024:
            raise TemplateError(f"invalid column '{_shown(name)}': columns() names are at "
                                "most 1024 characters")
        _check_identifier(ctx, "columns", name, bound["default"])
    fn = _plain(bound.get("fn"))
    if fn is not None and (not isinstance(fn, str) or not _SQL_NAME.fullmatch(fn)):
        _fail(f"columns() fn must be a function name, not {fn!r}")
    if fn is None:
        sql = ",".join(sql_identifier(name) for name in names)
    else:
        sql = ",".join(f"{fn}({sql_identifier(n)}) as {sql_identifier(n)}" for n in names)
    return SQLValue(sql, names)


def _symbol(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
    bound = _bind("symbol", args, kwargs, ("name", "default"))
    name = _identifier_of("symbol", _as_var(bound["name"]), bound.get("default"))
    _check_identifier(ctx, "symbol", name, bound.get("default"))
    return SQLValue(sql_identifier(name), name)


def _table(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
    bound = _bind("table", args, kwargs, ("name", "default"))
    name = _identifier_of("table", _as_var(bound["name"]), bound.get("default"))
    sql = ctx.tables.get(name)
    if sql is None:
        _fail(f"Resource '{_shown(name)}' not found")
    return SQLValue(sql, name)


_SQL_AND_OPS = {"in": "in", "not_in": "not in", "gt": ">", "lt": "<", "gte": ">=",
                "lte": "<="}


def _sql_and(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
    if args:
        _fail("sql_and() takes keyword arguments only")
    conditions: list[str] = []
    for key, value in kwargs.items():
        if value is None or value is _MISSING:
            continue
        column, _, op = key.rpartition("__")
        if not column or op not in _SQL_AND_OPS:
            column, op = key, ""
        operator = _SQL_AND_OPS.get(op, "=")
        conditions.append(f"{sql_identifier(column)} {operator} {_render_value(value)}")
    sql = " and ".join(conditions) if conditions else "1"
    return SQLValue(sql, bool(conditions))


def _split_to_array(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> list[str]:
    bound = _bind("split_to_array", args, kwargs, ("name", "default", "separator"))
    var = _as_var(bound["name"])
    value = var.value if var.present and var.value is not None \
        else _plain(bound.get("default", ""))
    separator = _plain(bound.get("separator", ","))
    if not isinstance(separator, str) or not separator:
        _fail("split_to_array() separator must be a non-empty string")
    texts = [_scalar_text(v) for v in value] if isinstance(value, (list, tuple)) \
        else [_scalar_text(value)] if value is not None else []
    return [part.strip() for text in texts for part in text.split(separator) if part.strip()]


def _enumerate_with_last(ctx: _Context, args: list[Any],
                         kwargs: dict[str, Any]) -> list[tuple[bool, Any]]:
    bound = _bind("enumerate_with_last", args, kwargs, ("items",))
    items = list(_iterable(bound["items"]))
    return [(index == len(items) - 1, item) for index, item in enumerate(items)]


def _sql_unescape(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
    bound = _bind("sql_unescape", args, kwargs, ("value", "pattern"))
    pattern = _plain(bound.get("pattern", "%"))
    # Only LIKE wildcards: un-escaping a quote would be an injection (Tinybird allows it).
    if pattern not in ("%", "_"):
        _fail("sql_unescape() only un-escapes '%' or '_'")
    # Neither character is ever escaped here (see the module docstring): nothing to undo.
    return bound["value"]


def _json(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
    bound = _bind("JSON", args, kwargs, ("name", "default") + _TYPE_SIGNATURE[2:])
    var = _as_var(bound["name"])
    if var.present and var.value is not None:
        try:
            return json.loads(_scalar_text(var.value))
        except (ValueError, RecursionError):
            _fail(f"Error validating '{_shown(_scalar_text(var.value))}' to type JSON")
    default = _plain(bound.get("default"))
    if default is None:
        ctx.required_error(var.name)
    return json.loads(default) if isinstance(default, str) else default


def _date_diff(fname: str, unit_seconds: int, date_format: str) -> _Fn:
    names = ("d0", "d1", "date_format", "default", "backup_date_format", "none_if_error")

    def fn(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
        bound = _bind(fname, args, kwargs, names, required=2)
        formats = [_plain(bound.get("date_format") or date_format)]
        if bound.get("backup_date_format"):
            formats.append(_plain(bound["backup_date_format"]))

        def parse(raw: Any) -> _dt.datetime:
            text = _scalar_text(raw)
            for fmt in formats:
                try:
                    return _dt.datetime.strptime(text, str(fmt))
                except ValueError:
                    continue
            _fail(f"{fname}(): '{_shown(text)}' does not match {formats[0]}")

        try:
            values = [_plain(bound["d0"]), _plain(bound["d1"])]
            if any(v is None or v is _MISSING for v in values):
                if bound.get("default") is not None:
                    return _plain(bound["default"])
                _fail(f"{fname}() needs two dates")
            delta = abs((parse(values[1]) - parse(values[0])).total_seconds())
        except TemplateError:
            if bound.get("none_if_error"):
                return None
            raise
        return int(delta // unit_seconds)

    return fn


def _day_diff(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
    bound = _bind("day_diff", args, kwargs, ("d0", "d1", "default"), required=2)
    return _date_diff("day_diff", 86400, "%Y-%m-%d")(ctx, [bound["d0"], bound["d1"]],
                                                       {"default": bound.get("default")})


def _error(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
    bound = _bind("error", args, kwargs, ("message", "code"))
    message = _scalar_text(bound["message"])
    if ctx.test_mode:
        return _NOTHING
    raise TemplateError(message, _status(bound.get("code", 400)))


def _custom_error(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
    bound = _bind("custom_error", args, kwargs, ("error", "code"))
    if ctx.test_mode:
        return _NOTHING
    error = _plain(bound["error"])
    body = {str(k): _plain(v) for k, v in error.items()} if isinstance(error, dict) \
        else {"error": _scalar_text(error)}
    raise TemplateError(str(body.get("error", body)), _status(bound.get("code", 400)), body)


def _status(code: Any) -> int:
    code = _plain(code)
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        _fail(f"error code must be an HTTP status between 400 and 599, not {code!r}")
    return code


def _max_threads(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
    bound = _bind("max_threads", args, kwargs, ("threads",))
    threads = _plain(bound["threads"])
    if isinstance(threads, str) and threads.isdigit():
        threads = int(threads)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        _fail(f"max_threads() takes an integer between 1 and 1024, not {threads!r}")
    ctx.settings["max_threads"] = threads
    return _NOTHING


def _hint(fname: str, allowed: Iterable[str] | None = None) -> _Fn:
    choices = frozenset(allowed) if allowed is not None else None

    def fn(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> SQLValue:
        bound = _bind(fname, args, kwargs, ("value",))
        value = _scalar_text(bound["value"])
        if choices is not None and value not in choices:
            _fail(f"{fname}() takes one of {', '.join(sorted(choices))}, not {value!r}")
        ctx.hints[fname] = value
        return _NOTHING

    return fn


def _builtin(fname: str, fn: Callable[..., Any]) -> _Fn:
    def call(ctx: _Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if kwargs:
            _fail(f"{fname}() takes no keyword arguments")
        plain = [_plain(a) for a in args]
        if fname in ("min", "max") and len(plain) == 1:
            plain = [[_plain(v) for v in _iterable(plain[0])]]
        if fname in ("list", "len") and plain and not isinstance(
                plain[0], (str, list, tuple, dict, set, frozenset)):
            _fail(f"{fname}() of a {type(plain[0]).__name__}")
        if fname == "int" and plain and isinstance(plain[0], str) and len(plain[0]) > 100:
            _fail("int() of a string longer than 100 characters")
        return fn(*plain)

    return call


#: Every function a template may call, by name.
FUNCTIONS: dict[str, _Fn] = {
    **{name: _typed(name) for name in _SCALAR_TYPES},
    "Array": _array,
    "JSON": _json,
    "defined": _defined,
    "column": _column,
    "Column": _column,
    "columns": _columns,
    "symbol": _symbol,
    "Symbol": _symbol,
    "table": _table,
    "TABLE": _table,
    "sql_and": _sql_and,
    "split_to_array": _split_to_array,
    "enumerate_with_last": _enumerate_with_last,
    "sql_unescape": _sql_unescape,
    "day_diff": _day_diff,
    "date_diff_in_days": _date_diff("date_diff_in_days", 86400, "%Y-%m-%d"),
    "date_diff_in_hours": _date_diff("date_diff_in_hours", 3600, "%Y-%m-%d %H:%M:%S"),
    "date_diff_in_minutes": _date_diff("date_diff_in_minutes", 60, "%Y-%m-%d %H:%M:%S"),
    "date_diff_in_seconds": _date_diff("date_diff_in_seconds", 1, "%Y-%m-%d %H:%M:%S"),
    "error": _error,
    "custom_error": _custom_error,
    "max_threads": _max_threads,
    "backend_hint": _hint("backend_hint"),
    "cache_ttl": _hint("cache_ttl", ("5s", "1m", "5m", "30m", "1h")),
    "activate": _hint("activate", ("analyzer", "parallel_replicas",
                                   "optimize_aggregation_in_order")),
    "disable": _hint("disable", ("analyzer",)),
    "len": _builtin("len", len),
    "list": _builtin("list", list),
    "min": _builtin("min", min),
    "max": _builtin("max", max),
    "int": _builtin("int", int),
    "float": _builtin("float", float),
}

#: Functions whose first argument, when a bare name, is a parameter (may be missing).
_PARAM_FUNCTIONS = frozenset(
    set(_SCALAR_TYPES) | {"Array", "JSON", "defined", "column", "Column", "columns",
                          "symbol", "Symbol", "table", "TABLE", "split_to_array"}
)
_TYPE_FUNCTIONS = frozenset(set(_SCALAR_TYPES) | {"Array", "JSON"})
_STR_METHODS = frozenset({"split", "join", "replace", "strip", "lower", "upper"})
_DICT_METHODS = frozenset({"get"})
_FORBIDDEN_NAMES = frozenset({"format", "q"})


# ---------------------------------------------------------------------------
# Validation (load time)

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)


def _check(node: ast.AST, line: int) -> None:
    """Raise :class:`TemplateSyntaxError` unless ``node`` is within the whitelist."""

    def bad(reason: str) -> NoReturn:
        raise TemplateSyntaxError(reason, line)

    def walk(node: ast.AST) -> None:
        match node:
            case ast.Constant(value=value):
                if value is not None and not isinstance(value, (str, int, float, bool)):
                    bad(f"Invalid constant: {value!r}")
            case ast.Name(id=name):
                if name.startswith("__"):
                    bad(f"Invalid name: {name}")
                if name in _FORBIDDEN_NAMES:
                    bad(f'"{name}" can not be used as a variable name')
            case ast.Call(func=func, args=args, keywords=keywords):
                if isinstance(func, ast.Name):
                    if func.id not in FUNCTIONS:
                        bad(f"Invalid function name: {func.id}")
                elif isinstance(func, ast.Attribute):
                    if func.attr not in _STR_METHODS | _DICT_METHODS:
                        bad(f"Invalid method name: {func.attr}")
                    walk(func.value)
                else:
                    bad(f"Invalid function: {ast.dump(func)[:100]}")
                for arg in args:
                    if isinstance(arg, ast.Starred):
                        bad("Invalid argument: *")
                    walk(arg)
                for keyword in keywords:
                    if keyword.arg is None:
                        bad("Invalid argument: **")
                    walk(keyword.value)
            case ast.UnaryOp(op=op, operand=operand):
                if not isinstance(op, (ast.USub, ast.UAdd, ast.Not)):
                    bad(f"Invalid UnaryOp: {type(op).__name__}()")
                walk(operand)
            case ast.BinOp(op=op, left=left, right=right):
                if type(op) not in _BINOPS:
                    bad(f"Invalid BinOp: {type(op).__name__}()")
                walk(left)
                walk(right)
            case ast.BoolOp(values=values):
                for value in values:
                    walk(value)
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                for cmp_op in ops:
                    if not isinstance(cmp_op, _CMPOPS):
                        bad(f"Invalid comparison: {type(cmp_op).__name__}()")
                walk(left)
                for comparator in comparators:
                    walk(comparator)
            case ast.IfExp(test=test, body=body, orelse=orelse):
                walk(test)
                walk(body)
                walk(orelse)
            case ast.Subscript(value=value, slice=index):
                walk(value)
                walk(index)
            case ast.Slice(lower=lower, upper=upper, step=step):
                for part in (lower, upper, step):
                    if part is not None:
                        walk(part)
            case ast.List(elts=elts) | ast.Tuple(elts=elts) | ast.Set(elts=elts):
                for elt in elts:
                    if isinstance(elt, ast.Starred):
                        bad("Invalid argument: *")
                    walk(elt)
            case ast.Dict(keys=keys, values=values):
                for key in keys:
                    if key is None:
                        bad("Invalid argument: **")
                    walk(key)
                for value in values:
                    walk(value)
            case ast.JoinedStr(values=values):
                for value in values:
                    walk(value)
            case ast.FormattedValue(value=value, conversion=conversion, format_spec=spec):
                if conversion != -1 or spec is not None:
                    bad("Invalid f-string: conversions and format specs are not allowed")
                walk(value)
            case _:
                bad(f"Invalid expression type: {ast.dump(node)[:200]}")

    walk(node)


def _parse_expr(source: str, line: int) -> Expr:
    text = source.strip()
    if not text:
        raise TemplateSyntaxError("Empty expression", line)
    try:
        # Parenthesised so that an expression may span lines; still one expression.
        tree = ast.parse("(" + text + "\n)", mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise TemplateSyntaxError(f"invalid expression '{_shown(text)}'", line) from None
    try:
        _check(tree.body, line)
    except RecursionError:
        raise TemplateSyntaxError("expression is nested too deeply", line) from None
    return tree.body


def _check_target(target: ast.expr, line: int) -> None:
    if isinstance(target, ast.Name):
        if target.id.startswith("__") or target.id in _FORBIDDEN_NAMES:
            raise TemplateSyntaxError(f"Invalid name: {target.id}", line)
        return
    if isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            _check_target(elt, line)
        return
    raise TemplateSyntaxError(f"Invalid assignment target: {ast.dump(target)[:100]}", line)


# ---------------------------------------------------------------------------
# Parsing


@dataclass(slots=True)
class _Token:
    kind: str  # "text" | "expr" | "stmt"
    content: str
    line: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    line = 1
    n = len(text)
    buffer: list[str] = []
    buffer_line = 1

    def flush() -> None:
        if buffer:
            tokens.append(_Token("text", "".join(buffer), buffer_line))
            buffer.clear()

    while pos < n:
        start = text.find("{", pos)
        while start != -1 and (start + 1 >= n or text[start + 1] not in "{%#"):
            start = text.find("{", start + 1)
        if start == -1:
            if not buffer:
                buffer_line = line
            buffer.append(text[pos:])
            break
        if not buffer:
            buffer_line = line
        buffer.append(text[pos:start])
        line += text.count("\n", pos, start)
        opener = text[start:start + 2]
        if start + 2 < n and text[start + 2] == "!":
            buffer.append(opener)  # "{{!" -> "{{", Tornado's escape
            pos = start + 3
            continue
        closer = {"{{": "}}", "{%": "%}", "{#": "#}"}[opener]
        end = text.find(closer, start + 2)
        if end == -1:
            raise TemplateSyntaxError(f"Missing end expression {closer}", line)
        content = text[start + 2:end]
        flush()
        if opener == "{{":
            tokens.append(_Token("expr", content, line))
        elif opener == "{%":
            tokens.append(_Token("stmt", content, line))
        line += content.count("\n")
        pos = end + 2
    flush()
    return tokens


def _split_statement(content: str) -> tuple[str, str]:
    parts = content.strip().split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._pos = 0

    def parse(self) -> tuple[_Node, ...]:
        body, stop = self._block((), None)
        assert stop is None
        return body

    def _block(self, stops: tuple[str, ...], opened: tuple[str, int] | None,
               loop: bool = False) -> tuple[tuple[_Node, ...], _Token | None]:
        nodes: list[_Node] = []
        while self._pos < len(self._tokens):
            token = self._tokens[self._pos]
            self._pos += 1
            if token.kind == "text":
                nodes.append(_Text(token.content))
                continue
            if token.kind == "expr":
                nodes.append(_Output(_parse_expr(token.content, token.line),
                                     token.content.strip(), token.line))
                continue
            word, rest = _split_statement(token.content)
            if word in stops:
                return tuple(nodes), token
            if word in FORBIDDEN_STATEMENTS:
                raise TemplateSyntaxError(f"{word} is forbidden", token.line)
            if word in ("end", "elif", "else"):
                raise TemplateSyntaxError(f"Extra {{% {word} %}} block", token.line)
            if word in ("comment", "whitespace"):
                continue
            if word in ("break", "continue"):
                if not loop:
                    raise TemplateSyntaxError(f"{word} outside of loop", token.line)
                nodes.append(_Jump(word, token.line))
            elif word == "if":
                nodes.append(self._if(rest, token.line, loop))
            elif word == "for":
                nodes.append(self._for(rest, token.line))
            elif word == "set":
                nodes.append(self._set(rest, token.line))
            elif not word:
                raise TemplateSyntaxError("Empty statement", token.line)
            else:
                raise TemplateSyntaxError(f"unknown operator: {word!r}", token.line)
        if opened is not None:
            raise TemplateSyntaxError(f"Missing {{% end %}} block for {opened[0]}", opened[1])
        return tuple(nodes), None

    def _if(self, condition: str, line: int, loop: bool) -> _If:
        branches: list[tuple[Expr, tuple[_Node, ...]]] = []
        test = _parse_expr(condition, line)
        orelse: tuple[_Node, ...] = ()
        while True:
            body, stop = self._block(("elif", "else", "end"), ("if", line), loop)
            branches.append((test, body))
            assert stop is not None
            word, rest = _split_statement(stop.content)
            if word == "elif":
                test = _parse_expr(rest, stop.line)
                continue
            if word == "else":
                orelse, stop = self._block(("end",), ("if", line), loop)
            return _If(tuple(branches), orelse, line)

    def _for(self, clause: str, line: int) -> _For:
        try:
            tree = ast.parse(f"for {clause}:\n pass\n", mode="exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise TemplateSyntaxError(f"invalid for loop '{_shown(clause)}'", line) from None
        statement = tree.body[0] if len(tree.body) == 1 else None
        if not isinstance(statement, ast.For) or statement.orelse:
            raise TemplateSyntaxError(f"invalid for loop '{_shown(clause)}'", line)
        _check_target(statement.target, line)
        _check(statement.iter, line)
        body, _ = self._block(("end",), ("for", line), loop=True)
        return _For(statement.target, statement.iter, body, line)

    def _set(self, clause: str, line: int) -> _Set:
        try:
            tree = ast.parse(clause + "\n", mode="exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise TemplateSyntaxError(f"invalid set '{_shown(clause)}'", line) from None
        statement = tree.body[0] if len(tree.body) == 1 else None
        if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
            raise TemplateSyntaxError(f"invalid set '{_shown(clause)}'", line)
        _check_target(statement.targets[0], line)
        _check(statement.value, line)
        return _Set(statement.targets[0], statement.value, line)


# ---------------------------------------------------------------------------
# Evaluation


@dataclass(slots=True)
class _Context:
    params: Mapping[str, ParamValue]
    tables: Mapping[str, str]
    test_mode: bool
    template: Template
    #: What ``column()``/``columns()``/``symbol()`` may name (None: anything).
    columns: Collection[str] | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    iterations: int = 0
    size: int = 0
    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_RENDER_SECONDS)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            _fail(f"the template took longer than {MAX_RENDER_SECONDS:g} s to render")

    def lookup(self, name: str) -> _Var:
        if name in self.variables:
            return _Var(name, self.variables[name], True)
        if name in self.params:
            return _Var(name, self.params[name], True)
        return _Var(name, _MISSING, False)

    def required_error(self, name: str | None) -> NoReturn:
        missing = [] if name is None else [name]
        for param in self.template.parameters:
            if (param.type in _TYPE_NAMES_REQUIRED and not param.has_default
                    and not param.optional and param.name not in self.params
                    and param.name not in missing):
                missing.append(param.name)
        if not missing:
            text = "the parameters"
        elif len(missing) == 1:
            text = f"the parameters {missing[0]}"
        else:
            text = "the parameters " + ", ".join(missing[:-1]) + " and " + missing[-1]
        _fail(f"Required parameter is not defined. Check {text}. Please provide a value "
              "or set a default value in the pipe code.")


_TYPE_NAMES_REQUIRED = frozenset(
    {t for t in _SCALAR_TYPES if t != "Boolean"} | {"JSON"}
)


def _iterable(value: Any) -> Iterable[Any]:
    value = _plain(value)
    if isinstance(value, (list, tuple, str, set, frozenset)):
        return value
    if isinstance(value, dict):
        return list(value.items())
    _fail(f"cannot iterate over {type(value).__name__}")


def _limit(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_OUTPUT_CHARS:
        _fail(f"value longer than {MAX_OUTPUT_CHARS} characters")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
        _fail("integer out of range")
    return value


def _eval(node: Expr, ctx: _Context) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            var = ctx.lookup(name)
            return var.value
        case ast.Call():
            ctx.check_time()
            return _call(node, ctx)
        case ast.UnaryOp(op=op, operand=operand):
            value = _plain(_eval(operand, ctx))
            if isinstance(op, ast.Not):
                return not value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(f"bad operand type for unary {'-' if isinstance(op, ast.USub) else '+'}:"
                      f" {type(value).__name__}")
            return -value if isinstance(op, ast.USub) else value
        case ast.BinOp(op=op, left=left, right=right):
            ctx.check_time()
            a = _plain(_eval(left, ctx))
            b = _plain(_eval(right, ctx))
            if isinstance(op, ast.Mult):
                for seq, count in ((a, b), (b, a)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(count, int) \
                            and len(seq) * count > MAX_OUTPUT_CHARS:
                        _fail(f"value longer than {MAX_OUTPUT_CHARS} characters")
                return _limit(a * b)
            if isinstance(op, ast.Add):
                if isinstance(a, (str, list, tuple)) and isinstance(b, type(a)) \
                        and len(a) + len(b) > MAX_OUTPUT_CHARS:
                    _fail(f"value longer than {MAX_OUTPUT_CHARS} characters")
                return _limit(a + b)
            return _limit(a - b)
        case ast.BoolOp(op=op, values=values):
            result: Any = None
            for value_node in values:
                result = _eval(value_node, ctx)
                if isinstance(op, ast.And) and not result:
                    return result
                if isinstance(op, ast.Or) and result:
                    return result
            return result
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            a = _plain(_eval(left, ctx))
            for cmp_op, comparator in zip(ops, comparators):
                b = _plain(_eval(comparator, ctx))
                if not _compare(cmp_op, a, b):
                    return False
                a = b
            return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body, ctx) if _eval(test, ctx) else _eval(orelse, ctx)
        case ast.Subscript(value=value, slice=index):
            container = _plain(_eval(value, ctx))
            if not isinstance(container, (str, list, tuple, dict)):
                _fail(f"'{type(container).__name__}' object is not subscriptable")
            if isinstance(index, ast.Slice):
                bounds = [None if part is None else _plain(_eval(part, ctx))
                          for part in (index.lower, index.upper, index.step)]
                if isinstance(container, dict):
                    _fail("cannot slice a dict")
                return container[slice(*bounds)]
            key = _plain(_eval(index, ctx))
            if isinstance(container, dict):
                if key not in container:
                    _fail(f"key {key!r} not found")
                return container[key]
            return container[key]
        case ast.List(elts=elts):
            return [_eval(elt, ctx) for elt in elts]
        case ast.Tuple(elts=elts):
            return tuple(_eval(elt, ctx) for elt in elts)
        case ast.Set(elts=elts):
            return {_plain(_eval(elt, ctx)) for elt in elts}
        case ast.Dict(keys=keys, values=values):
            return {_plain(_eval(k, ctx)) if k is not None else None: _eval(v, ctx)
                    for k, v in zip(keys, values)}
        case ast.JoinedStr(values=values):
            return _limit("".join(_format_part(v, ctx) for v in values))
    raise AssertionError(f"unvalidated node {ast.dump(node)[:100]}")  # pragma: no cover


def _format_part(node: ast.expr, ctx: _Context) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    assert isinstance(node, ast.FormattedValue)
    value = _plain(_eval(node.value, ctx))
    return "None" if value is _MISSING else str(value)


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    if a is _MISSING:
        a = None
    if b is _MISSING:
        b = None
    match op:
        case ast.Eq():
            return bool(a == b)
        case ast.NotEq():
            return bool(a != b)
        case ast.In() | ast.NotIn():
            if not isinstance(b, (str, list, tuple, dict, set, frozenset)):
                _fail(f"argument of type '{type(b).__name__}' is not iterable")
            if isinstance(b, str) and not isinstance(a, str):
                _fail("'in <string>' requires string as left operand")
            found = a in b
            return found if isinstance(op, ast.In) else not found
        case ast.Lt():
            return bool(a < b)
        case ast.LtE():
            return bool(a <= b)
        case ast.Gt():
            return bool(a > b)
        case ast.GtE():
            return bool(a >= b)
    raise AssertionError(op)  # pragma: no cover


def _call(node: ast.Call, ctx: _Context) -> Any:
    func = node.func
    if isinstance(func, ast.Attribute):
        return _method(func.attr, _plain(_eval(func.value, ctx)),
                       [_plain(_eval(a, ctx)) for a in node.args],
                       {k.arg: _plain(_eval(k.value, ctx)) for k in node.keywords
                        if k.arg is not None})
    assert isinstance(func, ast.Name)
    name = func.id
    args: list[Any] = []
    for index, arg in enumerate(node.args):
        if index == 0 and name in _PARAM_FUNCTIONS and isinstance(arg, ast.Name):
            args.append(ctx.lookup(arg.id))
        else:
            args.append(_eval(arg, ctx))
    kwargs = {k.arg: _eval(k.value, ctx) for k in node.keywords if k.arg is not None}
    if "name" in kwargs and name in _PARAM_FUNCTIONS and not args:
        _fail(f"{name}() takes the parameter as its first positional argument")
    return FUNCTIONS[name](ctx, args, kwargs)


def _method(method: str, receiver: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if isinstance(receiver, dict) and method in _DICT_METHODS:
        return receiver.get(*args, **kwargs)
    if not isinstance(receiver, str) or method not in _STR_METHODS:
        _fail(f"Invalid method: {type(receiver).__name__}.{method}")
    if method == "join":
        items = list(_iterable(args[0])) if len(args) == 1 and not kwargs else None
        if items is None or not all(isinstance(_plain(i), str) for i in items):
            _fail("join() takes one list of strings")
        items = [_plain(i) for i in items]
        if sum(map(len, items)) + len(receiver) * len(items) > MAX_OUTPUT_CHARS:
            _fail(f"value longer than {MAX_OUTPUT_CHARS} characters")
        return receiver.join(items)
    if method == "replace":
        if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = receiver.count(args[0]) if args[0] else len(receiver) + 1
            if len(receiver) + count * len(args[1]) > MAX_OUTPUT_CHARS:
                _fail(f"value longer than {MAX_OUTPUT_CHARS} characters")
    bound: Callable[..., Any] = getattr(receiver, method)
    return bound(*args, **kwargs)


def _render_value(value: Any, source: str | None = None, nested: bool = False) -> str:
    """What ``{{ }}`` emits for a value (``nested``: an element of a list or tuple)."""
    if isinstance(value, SQLValue):
        return value.sql
    if isinstance(value, _Var):
        value = value.value
    if value is None or value is _MISSING:
        shown = source if source is None or len(source) <= 20 else source[:20] + "..."
        _fail(f'expression "{shown}" evaluated to null')
    if isinstance(value, str):
        return sql_string(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        # A number the template computed, e.g. {{Int32(page, 0) * Int32(size, 10)}}.
        if isinstance(value, float):
            literal = _number_literal("Float64", value)
        elif -(1 << 255) <= value < (1 << 256):
            literal = _number_literal("Int256" if value < 0 else "UInt256", value)
        else:
            _fail(f"integer {value} is out of ClickHouse's range")
        return literal if nested else _sign_safe(literal)
    if isinstance(value, list):
        return "[" + ",".join(_render_value(v, source, True) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(_render_value(v, source, True) for v in value) + ")"
    _fail(f"cannot render a {type(value).__name__} as SQL")


def _assign(target: ast.expr, value: Any, ctx: _Context) -> None:
    if isinstance(target, ast.Name):
        ctx.variables[target.id] = value
        return
    assert isinstance(target, ast.Tuple | ast.List)
    items = list(_iterable(value))
    if len(items) != len(target.elts):
        _fail(f"cannot unpack {len(items)} values into {len(target.elts)}")
    for elt, item in zip(target.elts, items):
        _assign(elt, item, ctx)


def _run(nodes: Sequence[_Node], ctx: _Context, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            piece = node.text
        elif isinstance(node, _Output):
            piece = _render_value(_eval(node.expr, ctx), node.source)
        elif isinstance(node, _If):
            for test, body in node.branches:
                if _eval(test, ctx):
                    _run(body, ctx, out)
                    break
            else:
                _run(node.orelse, ctx, out)
            continue
        elif isinstance(node, _For):
            for item in list(_iterable(_eval(node.iterable, ctx))):
                ctx.iterations += 1
                if ctx.iterations > MAX_ITERATIONS:
                    _fail(f"more than {MAX_ITERATIONS} loop iterations")
                ctx.check_time()
                _assign(node.target, item, ctx)
                try:
                    _run(node.body, ctx, out)
                except _ContinueLoop:
                    continue
                except _BreakLoop:
                    break
            continue
        elif isinstance(node, _Set):
            _assign(node.target, _eval(node.value, ctx), ctx)
            continue
        else:
            raise _BreakLoop() if node.kind == "break" else _ContinueLoop()
        ctx.size += len(piece)
        if ctx.size > MAX_OUTPUT_CHARS:
            _fail(f"rendered SQL longer than {MAX_OUTPUT_CHARS} characters")
        out.append(piece)


# ---------------------------------------------------------------------------
# Public API


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered template.

    :ivar sql: the SQL text.
    :ivar settings: ClickHouse settings the template asked for (``max_threads``); pass
        them to the query, never paste them into the SQL.
    :ivar hints: other hints (``cache_ttl``, ``backend_hint``, ``activate``, ``disable``).
    """

    sql: str
    settings: dict[str, Any]
    hints: dict[str, str]


def is_template(sql: str) -> bool:
    """True when ``sql`` is a template: its first non-blank character is ``%``."""
    return sql.lstrip().startswith("%")


class Template:
    """A compiled template; get one with :func:`compile_template` (cached)."""

    __slots__ = ("text", "_nodes", "_parameters")

    def __init__(self, text: str) -> None:
        self.text = text
        body = text
        stripped = text.lstrip()
        if stripped.startswith("%"):
            # Drop the marker but keep the line count, so line numbers match the source.
            body = text[: len(text) - len(stripped)] + stripped[1:]
        self._nodes = _Parser(_tokenize(body)).parse()
        self._parameters: tuple[Param, ...] | None = None

    @property
    def parameters(self) -> tuple[Param, ...]:
        """The parameters the template reads (see :func:`template_parameters`)."""
        if self._parameters is None:
            self._parameters = tuple(_collect_parameters(self._nodes))
        return self._parameters

    def render(self, params: Mapping[str, ParamValue], *,
               tables: Mapping[str, str] | Iterable[str] = (),
               test_mode: bool = False,
               columns: Collection[str] | None = None) -> Rendered:
        """Render with request parameters.

        :param params: parameter name -> value (a list for a repeated key). Reserved
            request options must already be removed (see :mod:`tinyingest.pipes`).
        :param tables: what ``table(name)`` may name: a mapping name -> SQL to emit (looked
            up lazily, with ``get``), or names (emitted backquoted). Anything else is a 400.
        :param test_mode: missing parameters get placeholder values and ``error()`` does
            nothing (Tinybird's check at push time).
        :param columns: the identifiers ``column()``, ``columns()`` and ``symbol()`` accept
            (besides their own defaults): the columns of the tables the query may read.
            Anything else is a 400 ``invalid column ...``. None: no check (escaping only).
        :raises TemplateError: bad or missing parameter, ``error()``, ``custom_error()``.
        """
        table_sql = tables if isinstance(tables, Mapping) \
            else {name: sql_identifier(name) for name in tables}
        ctx = _Context(params, table_sql, test_mode, self, columns)
        out: list[str] = []
        try:
            _run(self._nodes, ctx, out)
        except TemplateError:
            raise
        except (_BreakLoop, _ContinueLoop):  # pragma: no cover - parser forbids
            raise TemplateError("Template Syntax Error: break outside of loop") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                RecursionError, MemoryError) as e:
            raise TemplateError(f"Template Syntax Error: {e}") from None
        return Rendered("".join(out), ctx.settings, ctx.hints)


@functools.lru_cache(maxsize=1024)
def compile_template(text: str) -> Template:
    """Parse and validate ``text`` once; later calls with the same text are free.

    A leading ``%`` marker is dropped. :raises TemplateSyntaxError: invalid template.
    """
    return Template(text)


def render_sql(sql: str, params: Mapping[str, ParamValue], *,
               tables: Mapping[str, str] | Iterable[str] = (),
               test_mode: bool = False,
               columns: Collection[str] | None = None) -> Rendered:
    """Render ``sql`` if it is a template (:func:`is_template`), else return it as is."""
    if not is_template(sql):
        return Rendered(sql, {}, {})
    return compile_template(sql).render(params, tables=tables, test_mode=test_mode,
                                        columns=columns)


def template_parameters(text: str) -> list[Param]:
    """The parameters a template reads, in order of first use, found statically.

    >>> [(p.name, p.type, p.default) for p in template_parameters(
    ...     "% SELECT {{Int32(limit, 10, description='rows')}} {{x}}")]
    [('limit', 'Int32', 10), ('x', 'String', None)]
    """
    return list(compile_template(text).parameters)


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None


def _collect_parameters(nodes: Sequence[_Node]) -> list[Param]:
    found: dict[str, Param] = {}
    assigned: set[str] = set()

    def add(param: Param) -> None:
        old = found.get(param.name)
        found[param.name] = param if old is None else _merge(param, old)

    def visit_expr(expr: ast.AST) -> None:
        skip = {id(sub.func) for sub in ast.walk(expr) if isinstance(sub, ast.Call)}
        for sub in ast.walk(expr):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) \
                    and sub.args and isinstance(sub.args[0], ast.Name) \
                    and sub.func.id in _PARAM_FUNCTIONS:
                skip.add(id(sub.args[0]))
                if sub.args[0].id not in assigned:
                    add(_param_from_call(sub.func.id, sub.args[0].id, sub))
            elif isinstance(sub, ast.Name) and id(sub) not in skip \
                    and sub.id not in assigned:
                add(Param(sub.id))

    def visit(nodes: Sequence[_Node]) -> None:
        for node in nodes:
            if isinstance(node, _Output):
                visit_expr(node.expr)
            elif isinstance(node, _If):
                for test, body in node.branches:
                    visit_expr(test)
                    visit(body)
                visit(node.orelse)
            elif isinstance(node, _For):
                visit_expr(node.iterable)
                assigned.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
                visit(node.body)
            elif isinstance(node, _Set):
                visit_expr(node.value)
                assigned.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))

    visit(nodes)
    return list(found.values())


def _merge(new: Param, old: Param) -> Param:
    return Param(
        new.name, new.type if new.type != "String" else old.type,
        new.default if new.default is not None else old.default,
        new.description or old.description, new.required or old.required,
        new.example if new.example is not None else old.example,
        new.enum or old.enum, new.format or old.format,
        new.min if new.min is not None else old.min,
        new.max if new.max is not None else old.max,
        new.optional and old.optional,
    )


def _param_from_call(fname: str, name: str, call: ast.Call) -> Param:
    signature: Sequence[str]
    if fname == "Array":
        signature = _ARRAY_SIGNATURE
    elif fname in ("column", "Column", "symbol", "Symbol", "table", "TABLE"):
        signature = ("name", "default")
    elif fname == "columns":
        signature = ("name", "default", "fn")
    elif fname == "split_to_array":
        signature = ("name", "default", "separator")
    else:
        signature = _TYPE_SIGNATURE
    nodes: dict[str, ast.expr] = dict(zip(signature, call.args))
    for keyword in call.keywords:
        if keyword.arg is not None:
            nodes[keyword.arg] = keyword.value
    meta = {key: _literal(node) for key, node in nodes.items() if key != "name"}
    if fname == "Array":
        type_name = f"Array({meta.get('type') or 'String'})"
    elif fname in ("column", "Column", "columns", "symbol", "Symbol"):
        type_name = "column"
    elif fname in ("table", "TABLE"):
        type_name = "table"
    elif fname in ("defined", "split_to_array"):
        type_name = "String"
    else:
        type_name = _INT_ALIASES.get(fname, fname)
    enum = meta.get("enum")
    description = meta.get("description")
    fmt = meta.get("format")
    return Param(
        name=name,
        type=type_name,
        default=meta.get("default"),
        description=description if isinstance(description, str) else None,
        required=bool(meta.get("required")),
        example=meta.get("example"),
        enum=tuple(enum) if isinstance(enum, (list, tuple)) else None,
        format=fmt if isinstance(fmt, str) else None,
        min=meta.get("min"),
        max=meta.get("max"),
        optional=meta.get("defined", True) is False,
    )
