"""The SQL template engine: syntax, functions, validation messages, sandbox (api.md 5)."""

from __future__ import annotations

from typing import Any

import pytest

from tinyingest.template import (
    MAX_ITERATIONS,
    Param,
    TemplateError,
    TemplateSyntaxError,
    compile_template,
    is_template,
    render_sql,
    sql_identifier,
    sql_string,
    template_parameters,
)


def render(text: str, **params: Any) -> str:
    return compile_template("%\n" + text).render(params).sql.lstrip("\n")


def error(text: str, **params: Any) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        render(text, **params)
    return info.value


def load_error(text: str) -> TemplateSyntaxError:
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(text)
    return info.value


# -- syntax -----------------------------------------------------------------------------


def test_is_template_needs_leading_percent() -> None:
    assert is_template("  %\nSELECT 1")
    assert not is_template("SELECT '%'")
    assert render_sql("SELECT {{x}}", {}).sql == "SELECT {{x}}"


def test_percent_marker_is_dropped_and_lines_kept() -> None:
    assert compile_template("%\nSELECT 1").render({}).sql == "\nSELECT 1"
    assert load_error("%\nSELECT\n{{ eval(1) }}").line == 3


def test_if_elif_else() -> None:
    text = "{% if a == '1' %}one{% elif a in ['2', '3'] %}two{% else %}other{% end %}"
    assert render(text, a="1") == "one"
    assert render(text, a="3") == "two"
    assert render(text, a="9") == "other"
    assert render(text) == "other"


def test_for_set_break_continue() -> None:
    text = ("{% set n = 0 %}{% for x in split_to_array(xs) %}"
            "{% if x == 'skip' %}{% continue %}{% end %}{% if x == 'stop' %}{% break %}{% end %}"
            "{{x}};{% end %}")
    assert render(text, xs="a,skip,b,stop,c") == "'a';'b';"


def test_comments_and_literal_braces() -> None:
    assert render("a{# {{ eval(1) }} #}b") == "ab"
    assert render("{{! literally {%! and {#!") == "{{ literally {% and {#"
    assert render("{% comment anything %}x{% whitespace all %}") == "x"


def test_comparisons_boolops_ternary_subscripts() -> None:
    assert render("{{ 'y' if a >= '5' and not b else 'n' }}", a="7") == "'y'"
    assert render("{{ xs[1] }} {{ xs[-1:] }} {{ {'k': 2}['k'] }}", xs=["a", "b", "c"]) \
        == "'b' ['c'] 2"
    assert render("{{ -1 + 2 * 3 }}") == "5"
    assert render("{{ (1, 'a') }}") == "(1,'a')"


def test_methods_on_strings_and_dicts() -> None:
    assert render("{{ x.upper().replace('A', 'b') }}", x="aa") == "'bb'"
    assert render("{{ ','.join(x.split('-')) }}", x="a-b") == "'a,b'"
    assert render("{{ JSON(j).get('k', 'none') }}", j='{"k": "v"}') == "'v'"
    assert render("{{ x.strip().lower() }}", x=" AB ") == "'ab'"


def test_f_strings() -> None:
    assert render("{{ f'{a}-{1}' }}", a="x'") == "'x\\'-1'"


@pytest.mark.parametrize("text, message", [
    ("{% if a %}x", "Missing {% end %} block for if at line 1"),
    ("{% for x in y %}", "Missing {% end %} block for for at line 1"),
    ("{% end %}", "Extra {% end %} block at line 1"),
    ("{% else %}", "Extra {% else %} block at line 1"),
    ("{% break %}", "break outside of loop at line 1"),
    ("{{ }}", "Empty expression at line 1"),
    ("{{ x", "Missing end expression }} at line 1"),
    ("{% frobnicate %}", "unknown operator: 'frobnicate' at line 1"),
    ("{{ 1 + }}", "invalid expression '1 +' at line 1"),
    ("{{ format }}", '"format" can not be used as a variable name at line 1'),
    ("{% set q = 1 %}", "Invalid name: q at line 1"),
])
def test_syntax_errors(text: str, message: str) -> None:
    assert str(load_error(text)) == "Template Syntax Error: " + message


@pytest.mark.parametrize("statement", [
    "import os", "from os import path", "extends 'x'", "include 'x'", "raw x", "module x",
    "apply x", "block x", "autoescape None", "while True", "try", "except", "finally",
])
def test_forbidden_statements_fail_at_load(statement: str) -> None:
    word = statement.split()[0]
    err = load_error("SELECT 1\n{% " + statement + " %}{% end %}")
    assert str(err) == f"Template Syntax Error: {word} is forbidden at line 2"
    assert err.status == 400


# -- sandbox ----------------------------------------------------------------------------


@pytest.mark.parametrize("expr, reason", [
    ("__import__('os')", "Invalid function name: __import__"),
    ("eval('1')", "Invalid function name: eval"),
    ("exec('1')", "Invalid function name: exec"),
    ("open('/etc/passwd')", "Invalid function name: open"),
    ("getattr(x, 'y')", "Invalid function name: getattr"),
    ("type(x)", "Invalid function name: type"),
    ("().__class__", "Invalid expression type: Attribute("),
    ("x.__class__.__mro__[1].__subclasses__()", "Invalid method name: __subclasses__"),
    ("''.__class__", "Invalid expression type: Attribute("),
    ("x.upper", "Invalid expression type: Attribute("),
    ("'{0.__class__}'.format(x)", "Invalid method name: format"),
    ("x.startswith('a')", "Invalid method name: startswith"),
    ("__builtins__", "Invalid name: __builtins__"),
    ("2 ** 10", "Invalid BinOp: Pow()"),
    ("2 / 1", "Invalid BinOp: Div()"),
    ("2 // 1", "Invalid BinOp: FloorDiv()"),
    ("'%s' % x", "Invalid BinOp: Mod()"),
    ("1 << 100", "Invalid BinOp: LShift()"),
    ("~1", "Invalid UnaryOp: Invert()"),
    ("x is None", "Invalid comparison: Is()"),
    ("lambda: 1", "Invalid expression type: Lambda("),
    ("[y for y in x]", "Invalid expression type: ListComp("),
    ("{y: 1 for y in x}", "Invalid expression type: DictComp("),
    ("(y := 1)", "Invalid expression type: NamedExpr("),
    ("String(*x)", "Invalid argument: *"),
    ("String(**x)", "Invalid argument: **"),
    ("[*x]", "Invalid argument: *"),
    ("{**x}", "Invalid argument: **"),
    ("f'{x!r}'", "Invalid f-string"),
    ("f'{x:>10}'", "Invalid f-string"),
    ("b'x'", "Invalid constant"),
    ("1j", "Invalid constant"),
    ("(yield)", "Invalid expression type: Yield("),
])
def test_sandbox_rejects_at_load_in_output_and_statements(expr: str, reason: str) -> None:
    for text in ("{{ " + expr + " }}", "{% set v = " + expr + " %}",
                 "{% if " + expr + " %}{% end %}", "{% for v in " + expr + " %}{% end %}"):
        err = load_error(text)
        assert err.message.startswith("Template Syntax Error: " + reason), (text, err.message)


def test_sandbox_methods_only_on_strings_and_dicts() -> None:
    # split() on a list, get() on a str: refused at render, not executed.
    assert "Invalid method" in error("{{ xs.split(',') }}", xs=["a"]).message
    assert "Invalid method" in error("{{ x.get('a') }}", x="s").message


def test_param_values_are_never_evaluated() -> None:
    payload = "{{ __import__('os').system('id') }}{% import os %}"
    assert render("{{String(x)}}", x=payload) == sql_string(payload)
    assert render("{{x}}", x=payload) == sql_string(payload)


def test_dunder_params_are_unreachable() -> None:
    assert load_error("{{ __tb__x }}").reason == "Invalid name: __tb__x"


@pytest.mark.parametrize("text", [
    "{{ 'a' * 100000000 }}",
    "{% set s = 'aaaaaaaaaaaaaaaa' %}{% for i in split_to_array(n) %}"
    "{% set s = s + s %}{% end %}{{len(s)}}",
    "{{ x.replace('', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') }}",
])
def test_resource_limits(text: str) -> None:
    err = error(text, n=",".join("1" * 40), x="y" * 400_000)
    assert "longer than" in err.message


def test_integer_growth_is_bounded() -> None:
    text = "{% set n = 3 %}{% for i in split_to_array(xs) %}{% set n = n * n %}{% end %}{{n}}"
    assert "integer out of range" in error(text, xs=",".join("1" * 20)).message


def test_loop_iterations_are_bounded() -> None:
    xs = ",".join(["1"] * 1000)
    text = "{% for a in split_to_array(xs) %}{% for b in split_to_array(xs) %}{% end %}{% end %}"
    assert str(MAX_ITERATIONS) in error(text, xs=xs).message


# -- escaping -----------------------------------------------------------------------------


def test_string_escaping_exact() -> None:
    assert sql_string("\0\r\n\t\b\x1a\"'\\`%_") == "'\\0\\r\\n\\t\\b\\x1A\\\"\\'\\\\\\`%_'"
    assert render("{{String(x)}}", x="';drop table users;") == "'\\';drop table users;'"
    assert render("{{String(x)}}", x="\\") == "'\\\\'"
    assert render("{{String(x)}}", x="ünï €") == "'ünï €'"


def test_percent_is_not_escaped_and_sql_unescape_is_a_no_op() -> None:
    assert render("{{String(x)}}", x="100%") == "'100%'"
    assert render("{{sql_unescape(String(x), '%')}}", x="10%\\%") == "'10%\\\\%'"
    assert "only un-escapes" in error("{{sql_unescape(String(x), \"'\")}}", x="a").message


def test_identifier_escaping() -> None:
    assert sql_identifier("a`b\\c") == "`a\\`b\\\\c`"
    assert render("{{column(c, 'ts')}}", c="x`), b") == "`x\\`), b`"
    assert render("{{column(c, 'ts')}}", c="json.a") == "`json.a`"
    assert render("{{symbol(s)}}", s="system.users") == "`system.users`"


def test_lists_render_as_arrays_with_escaped_strings() -> None:
    assert render("{{ split_to_array(x) }}", x="a, b'c") == "['a','b\\'c']"
    assert render("{{ x }}", x=["1", "2"]) == "['1','2']"
    assert "cannot render a dict" in error("{{ JSON(j) }}", j='{"a": 1}').message


# -- typed parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("fn, value, sql", [
    # Plain literals (ClickHouse 18.16 takes nothing else after LIMIT), negative ones in
    # parentheses so that "10-{{x}}" cannot become the comment "10--3".
    ("Int8", "-128", "(-128)"),
    ("Int8", "+127", "127"),
    ("Int16", "007", "7"),
    ("Int32", "5", "5"),
    ("Int64", "-9223372036854775808", "(-9223372036854775808)"),
    ("UInt8", "255", "255"),
    ("UInt64", "18446744073709551615", "18446744073709551615"),
    ("Int128", "5", "5"),
    # Past 64 bits a plain literal would be read as a Float64: Tinybird's cast stays.
    ("Int128", str(2**127 - 1), f"toInt128('{2**127 - 1}')"),
    ("Int256", str(-2**255), f"toInt256('{-2**255}')"),
    ("UInt64", "0", "0"),
    ("UInt256", str(2**64), f"toUInt256('{2**64}')"),
    ("UInt256", str(2**256 - 1), f"toUInt256('{2**256 - 1}')"),
    ("Int", "7", "7"),
    ("Integer", "-7", "(-7)"),
    ("Float32", "1", "1.0"),
    ("Float32", "1.5", "1.5"),
    # The Float32 value, as the Float64 literal that equals it (see _number_literal).
    ("Float32", "0.1", "0.10000000149011612"),
    ("Float32", "1e300", "toFloat32('1e+300')"),
    ("Float64", "1e3", "1000.0"),
    ("Float64", "1e300", "1e+300"),
    ("Float64", " -2.5 ", "(-2.5)"),
    ("Float64", "-0", "(-0.0)"),
    # Subnormal: 18.16 refuses the literal; an exact product of two normal ones.
    ("Float64", "1e-310", "(4.14951556888098e-130 * 2.409919865102884e-181)"),
    ("Float64", "1e400", "toFloat64('inf')"),
    ("Float64", "-inf", "toFloat64('-inf')"),
    ("Float64", "nan", "toFloat64('nan')"),
    ("Boolean", "false", "0"),
    ("Boolean", "FALSE", "0"),
    ("Boolean", "0", "0"),
    ("Boolean", "", "0"),
    ("Boolean", "yes", "1"),
    ("Date", "2024-01-31", "'2024-01-31'"),
    ("DateTime", "2024-01-31 10:00:00", "'2024-01-31 10:00:00'"),
    ("DateTime", "2024-01-31T10:00:00Z", "'2024-01-31T10:00:00Z'"),
    ("DateTime", "31.01.2024 1:2:3", "'31.01.2024 1:2:3'"),
    ("DateTime", "2024-01-31 10:00:00' OR 1=1", "'2024-01-31 10:00:00\\' OR 1=1'"),
    ("DateTime64", "2024-01-31 10:00:00.123", "'2024-01-31 10:00:00.123'"),
    ("String", "x", "'x'"),
])
def test_typed_values(fn: str, value: str, sql: str) -> None:
    assert render(f"{{{{{fn}(p)}}}}", p=value) == sql


@pytest.mark.parametrize("fn, value", [
    ("Int8", "300"), ("Int8", "-129"), ("Int8", "1 OR 1=1"), ("Int8", "1.0"),
    ("Int8", "1e3"), ("Int8", "0x10"), ("Int8", " 1"), ("Int8", "1\n"), ("Int8", "٣"),
    ("Int8", ""), ("UInt8", "-1"), ("UInt8", "256"), ("UInt64", "18446744073709551616"),
    ("Int32", "2147483648"), ("Int", "2147483648"), ("Float32", "1_000"),
    ("Float64", "abc"), ("Float64", "1; DROP TABLE t"), ("Date", "2024-01-01 x"),
    ("Date", "02.01.2024"), ("DateTime", "2024-01-01"), ("DateTime", "yesterday"),
])
def test_validation_errors(fn: str, value: str) -> None:
    err = error(f"{{{{{fn}(p)}}}}", p=value)
    assert err.message == f"Template Syntax Error: Error validating '{value}' to type {fn}"
    assert err.status == 400
    assert err.body == {"error": err.message}


def test_min_max_keywords() -> None:
    assert render("{{Int32(n, 5, min=1, max=10)}}", n="10") == "10"
    assert error("{{Int32(n, 5, min=1, max=10)}}", n="11").message.startswith(
        "Template Syntax Error: Error validating '11' to type Int32")


def test_defaults_and_metadata_keywords() -> None:
    text = ("{{Int32(limit, 10, description='rows', required=False, example='5', "
            "enum=['5', '10'], format='int')}}")
    assert render(text) == "10"
    assert render(text, limit="3") == "3"
    assert render("{{String(s, default='d')}}") == "'d'"
    assert "unexpected keyword argument 'bogus'" in error("{{String(s, bogus=1)}}").message


def test_required_parameter_message() -> None:
    err = error("{{Int32(a)}} {{String(b)}} {{Date(c)}} {{Int32(d, 1)}} {{Boolean(e)}}", c="x")
    assert err.message == (
        "Template Syntax Error: Required parameter is not defined. Check the parameters "
        "a and b. Please provide a value or set a default value in the pipe code.")


def test_untyped_null_message() -> None:
    assert error("{{x}}").message == 'Template Syntax Error: expression "x" evaluated to null'
    assert error("{{abcdefghijklmnopqrstuvwxyz}}").message == (
        'Template Syntax Error: expression "abcdefghijklmnopqrst..." evaluated to null')


def test_repeated_keys_use_last_value_for_scalars() -> None:
    assert render("{{Int32(n)}}", n=["1", "2"]) == "2"


def test_array() -> None:
    assert render("{{Array(t, 'Int32')}}", t="1, 2,3") == "[1,2,3]"
    assert render("{{Array(t, 'Int32')}}", t=["1", "2"]) == "[1,2]"
    assert render("{{Array(t)}}", t="a,b'c") == "['a','b\\'c']"
    assert render("{{Array(t, 'String', 'x,y')}}") == "['x','y']"
    assert render("{{Array(t, 'Int8', [1, 2])}}") == "[1,2]"
    assert render("{{Array(t, 'Float64')}}", t="1,2.5") == "[1.0,2.5]"
    assert render("{{Array(t, 'Date')}}", t="2024-01-01") == "['2024-01-01']"
    assert render("{{Array(t, 'Boolean')}}", t="0,1") == "[0,1]"
    assert render("{{Array(t, 'Int32')}}", t="") == "[]"
    # Elements follow "[" or ",": negative ones need no parentheses; the scalar rules else.
    assert render("{{Array(t, 'Int32')}}", t="-1,-2") == "[-1,-2]"
    assert render("{{Array(t, 'Float32')}}", t="0.1,nan") == \
        "[0.10000000149011612,toFloat32('nan')]"
    assert render("{{Array(t, 'UInt128')}}", t=f"1,{2**64}") == f"[1,toUInt128('{2**64}')]"
    err = error("{{Array(t, 'Float32')}}", t="1,2,3,4, null")
    assert err.message == ("Template Syntax Error: Error validating [1,2,3,4, null][4] ( null) "
                           "to type Float32")
    assert "Array() type must be" in error("{{Array(t, 'Nope')}}", t="1").message


def test_column_and_columns() -> None:
    assert render("{{column(c, 'ts')}}") == "`ts`"
    assert render("{{columns(c, 'a,b')}}", c="x, y") == "`x`,`y`"
    assert render("{{columns(c, 'a', fn='sum')}}") == "sum(`a`) as `a`"
    assert error("{{column(c)}}", c="x").message == (
        "Template Syntax Error: Missing column() default value, use "
        "`column(column_name, 'default_column_name')`")
    assert "fn must be a function name" in error("{{columns(c, 'a', fn='x)--')}}").message


def test_table_only_allowed_names() -> None:
    template = compile_template("% SELECT * FROM {{table(t)}}")
    assert template.render({"t": "events"}, tables={"events"}).sql == " SELECT * FROM `events`"
    assert template.render({"t": "e"}, tables={"e": "`db`.`e`"}).sql == " SELECT * FROM `db`.`e`"
    with pytest.raises(TemplateError, match="Resource 'system.users' not found"):
        template.render({"t": "system.users"}, tables={"events"})
    with pytest.raises(TemplateError, match="Resource 'events where 1=1' not found"):
        template.render({"t": "events where 1=1"}, tables={"events"})


def test_defined() -> None:
    text = "{% if defined(a) %}yes{% else %}no{% end %}"
    assert render(text, a="") == "yes"
    assert render(text) == "no"
    assert render("{% set a = 1 %}" + text) == "yes"


def test_sql_and() -> None:
    text = ("{{sql_and(a=String(a, defined=False), b__in=Array(b, 'Int32', defined=False), "
            "c__gte=Int32(c, defined=False), d__not_in=Array(d, defined=False), "
            "e__lt=Float64(e, defined=False))}}")
    assert render(text) == "1"
    assert render(text, a="x", b="1,2", c="3", d="p", e="1") == (
        "`a` = 'x' and `b` in [1,2] and `c` >= 3 and `d` not in ['p'] "
        "and `e` < 1.0")


def test_split_to_array_and_enumerate_with_last() -> None:
    text = ("{% for last, x in enumerate_with_last(split_to_array(t, '')) %}"
            "{{x}}{% if not last %},{% end %}{% end %}")
    assert render(text, t="a, b,,c") == "'a','b','c'"
    assert render(text) == ""
    assert render("{{ split_to_array(t, 'x|y', separator='|') }}") == "['x','y']"


def test_date_diffs() -> None:
    assert render("{{day_diff(a, b)}}", a="2024-01-01", b="2024-03-01") == "60"
    assert render("{{date_diff_in_days(a, b)}}", a="2024-03-01", b="2024-01-01") == "60"
    assert render("{{date_diff_in_hours(a, b)}}", a="2024-01-01 00:00:00",
                  b="2024-01-02 01:30:00") == "25"
    assert render("{{date_diff_in_minutes(a, b)}}", a="2024-01-01 00:00:00",
                  b="2024-01-01 00:10:59") == "10"
    assert render("{{date_diff_in_seconds(a, b, '%Y%m%d')}}", a="20240101",
                  b="20240102") == "86400"
    assert "does not match" in error("{{day_diff(a, b)}}", a="x", b="2024-01-01").message
    assert render("{{date_diff_in_days(a, b, none_if_error=True) or 0}}", a="x", b="y") == "0"


def test_error_and_custom_error() -> None:
    err = error("{% if not defined(x) %}{{ error('x is needed', 403) }}{% end %}")
    assert (err.status, err.body) == (403, {"error": "x is needed"})
    err = error("{{ custom_error({'error': 'nope', 'code': 'E1'}, 422) }}")
    assert (err.status, err.body) == (422, {"error": "nope", "code": "E1"})
    assert "HTTP status" in error("{{ error('x', 200) }}").message


def test_max_threads_and_hints_are_returned_not_rendered() -> None:
    rendered = compile_template("% SELECT 1 {{max_threads(2)}}{{cache_ttl('5m')}}").render({})
    assert rendered.sql == " SELECT 1 "
    assert rendered.settings == {"max_threads": 2}
    assert rendered.hints == {"cache_ttl": "5m"}
    assert "between 1 and 1024" in error("{{max_threads(x)}}", x="1; DROP").message


def test_builtins() -> None:
    assert render("{{len(x)}} {{min(1, 2)}} {{max(Array(a, 'Int32'))}} {{int(n) + 1}} "
                  "{{float('1.5')}} {{list('ab')}}", x="abc", a="3,9", n="4") \
        == "3 1 9 5 1.5 ['a','b']"


def test_computed_numbers_render_like_typed_ones() -> None:
    text = "LIMIT {{Int32(size, 10)}} OFFSET {{Int32(page, 0) * Int32(size, 10)}}"
    assert render(text, page="2") == "LIMIT 10 OFFSET 20"
    assert render("SELECT 10-{{Int32(a) - 5}}", a="2") == "SELECT 10-(-3)"
    assert render("{{Float64(x) * 2}}", x="1e308") == "toFloat64('inf')"
    assert render("{{[1, -2, Int32(a)]}}", a="-3") == "[1,-2,(-3)]"
    assert render("{{UInt64(a) * 2}}", a=str(2**63)) == f"toUInt256('{2**64}')"
    assert "out of ClickHouse's range" in error(
        "{{UInt256(a) * 2}}", a=str(2**255)).message


def test_typed_values_work_in_logic() -> None:
    text = "{% if Int32(limit, 10) > 50 %}big{% else %}small{% end %}"
    assert render(text, limit="100") == "big"
    assert render(text) == "small"


def test_test_mode_uses_placeholders() -> None:
    template = compile_template("% {{Int32(a)}} {{String(b)}} {{Array(c, 'Int8')}} {{error('x')}}")
    assert template.render({}, test_mode=True).sql == " 0 '__no_value__' [0,0] "


def test_compile_is_cached() -> None:
    assert compile_template("% SELECT {{x}}") is compile_template("% SELECT {{x}}")


# -- parameter listing ----------------------------------------------------------------------


def test_template_parameters() -> None:
    params = template_parameters(
        "% SELECT {{Int32(limit, 10, description='rows', enum=[10, 20])}} {{x}}\n"
        "{% if defined(start) %}{{DateTime(start, required=True)}}{% end %}\n"
        "{% set local = 1 %}{{local}} {% for t in split_to_array(tags) %}{{t}}{% end %}\n"
        "{{Array(ids, 'UInt64', default='1')}} {{column(col, 'ts')}} {{Int8(opt, defined=False)}}")
    assert params == [
        Param("limit", "Int32", 10, "rows", enum=(10, 20)),
        Param("x"),
        Param("start", "DateTime", required=True),
        Param("tags", "String"),
        Param("ids", "Array(UInt64)", "1"),
        Param("col", "column", "ts"),
        Param("opt", "Int8", optional=True),
    ]
