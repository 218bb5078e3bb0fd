"""JSONTestSuite's ``test_parsing`` (reliability.md C10): all 318 documents, each as one row.

An NDJSON row must be an object, and most documents are arrays or scalars, so each
document is sent as the value of a member: ``{"v":<document>}`` into ``v Nullable(String)``
(an object or array is stored as its compact JSON, a string as its text). Every ``y_``
document is stored, with the value ``json.loads`` reads; every ``n_`` document is
quarantined and nothing stored; the ``i_`` outcomes are listed in ``I_OUTCOMES``. Both
parsers give the same result, and the whole corpus fed one byte at a time gives the same
block as fed whole.

An NDJSON row cannot hold a raw line feed, so the four ``y_`` documents that have one
between tokens are sent with it written as a space (the same JSON); ``n_`` documents are
sent as they are (their lines are then quarantined one by one).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import jsontestsuite
from parsers import col, implementation, parser_module, rows, run
from tinyingest.errors import ErrorCode

__all__ = ["parser_module"]  # the fixture, imported for pytest

DOCUMENTS = jsontestsuite.load()
V = [col("Nullable(String)", "$.v", "v")]
# NOT_OBJECT: a line of an n_ document split at its line feeds may be a valid scalar ("4").
REJECTED = {ErrorCode.INVALID_JSON, ErrorCode.INVALID_UTF8, ErrorCode.TOO_DEEP,
            ErrorCode.NOT_OBJECT}

ACCEPTED = "stored"
# The implementation-defined documents: what we do, and the error code when quarantined.
I_OUTCOMES: dict[str, str | ErrorCode] = {
    # Numbers beyond double range or 64 bits are valid JSON: a String column keeps their
    # text as written (a Float64 or Int column quarantines them as out of range).
    "i_number_double_huge_neg_exp.json": ACCEPTED,
    "i_number_huge_exp.json": ACCEPTED,
    "i_number_neg_int_huge_exp.json": ACCEPTED,
    "i_number_pos_double_huge_exp.json": ACCEPTED,
    "i_number_real_neg_overflow.json": ACCEPTED,
    "i_number_real_pos_overflow.json": ACCEPTED,
    "i_number_real_underflow.json": ACCEPTED,
    "i_number_too_big_neg_int.json": ACCEPTED,
    "i_number_too_big_pos_int.json": ACCEPTED,
    "i_number_very_big_negative_int.json": ACCEPTED,
    # A lone or mismatched surrogate escape cannot be stored as UTF-8.
    "i_object_key_lone_2nd_surrogate.json": ErrorCode.INVALID_UTF8,
    "i_string_1st_surrogate_but_2nd_missing.json": ErrorCode.INVALID_UTF8,
    "i_string_1st_valid_surrogate_2nd_invalid.json": ErrorCode.INVALID_UTF8,
    "i_string_incomplete_surrogate_and_escape_valid.json": ErrorCode.INVALID_UTF8,
    "i_string_incomplete_surrogate_pair.json": ErrorCode.INVALID_UTF8,
    "i_string_incomplete_surrogates_escape_valid.json": ErrorCode.INVALID_UTF8,
    "i_string_invalid_lonely_surrogate.json": ErrorCode.INVALID_UTF8,
    "i_string_invalid_surrogate.json": ErrorCode.INVALID_UTF8,
    "i_string_inverted_surrogates_U+1D11E.json": ErrorCode.INVALID_UTF8,
    "i_string_lone_second_surrogate.json": ErrorCode.INVALID_UTF8,
    # UTF-16 is not read (NUL bytes between the characters are not JSON).
    "i_string_utf16BE_no_BOM.json": ErrorCode.INVALID_JSON,
    "i_string_utf16LE_no_BOM.json": ErrorCode.INVALID_JSON,
    "i_string_UTF-16LE_with_BOM.json": ErrorCode.INVALID_JSON,
    # Deeper than MAX_DEPTH (64).
    "i_structure_500_nested_arrays.json": ErrorCode.TOO_DEEP,
    # A BOM is skipped at the start of a body only (see test_bom_document_as_a_body),
    # not inside a row.
    "i_structure_UTF-8_BOM_empty_object.json": ErrorCode.INVALID_JSON,
}
# The package stores these as text, their invalid UTF-8 bytes replaced by U+FFFD: what we
# receive is valid UTF-8, so their outcome here says nothing about the original file.
# Invalid UTF-8 itself is quarantined (test_parse_differential.py's N_ROWS).
I_LOSSY = {name for name, doc in DOCUMENTS.items()
           if name.startswith("i_") and "\ufffd".encode() in doc}


def _row(name: str) -> bytes:
    document = DOCUMENTS[name]
    if name.startswith("y_"):
        document = document.replace(b"\n", b" ")
    return b'{"v":' + document + b"}\n"


def _parse(module: Any, name: str) -> Any:
    return run(module, "ndjson", V, [_row(name)])


def _names(prefix: str) -> list[str]:
    return sorted(name for name in DOCUMENTS if name.startswith(prefix))


def test_the_whole_suite_is_here() -> None:
    counts = {prefix: len(_names(prefix)) for prefix in ("y_", "n_", "i_")}
    assert counts == {"y_": 95, "n_": 188, "i_": 35}
    assert set(I_OUTCOMES) | I_LOSSY == set(_names("i_"))


@pytest.mark.parametrize("name", _names("y_"))
def test_y_documents_are_stored(parser_module: Any, name: str) -> None:
    result = _parse(parser_module, name)
    assert result[3] == () and result[1] == 1
    ((stored,),) = rows(V, result)
    expected = json.loads(DOCUMENTS[name])
    if expected is None:
        assert stored is None
    elif isinstance(expected, str):
        assert stored == expected.encode()
    else:  # compact JSON text of the same value (numbers as written)
        assert json.loads(stored) == expected


@pytest.mark.parametrize("name", _names("n_"))
def test_n_documents_are_quarantined(parser_module: Any, name: str) -> None:
    result = _parse(parser_module, name)
    assert result[1] == 0
    assert result[3] and {ErrorCode(code) for _, _, code, _ in result[3]} <= REJECTED


@pytest.mark.parametrize("name", sorted(I_OUTCOMES))
def test_i_documents_as_listed(parser_module: Any, name: str) -> None:
    result = _parse(parser_module, name)
    if I_OUTCOMES[name] == ACCEPTED:
        assert result[3] == () and result[1] == 1
    else:
        assert result[1] == 0
        assert [code for _, _, code, _ in result[3]] == [I_OUTCOMES[name]]


def test_bom_document_as_a_body(parser_module: Any) -> None:
    """``\\xef\\xbb\\xbf{}`` sent as a body of its own: the BOM is skipped, the row stored."""
    document = DOCUMENTS["i_structure_UTF-8_BOM_empty_object.json"]
    result = run(parser_module, "ndjson", V, [document])
    assert result[3] == () and rows(V, result) == [(None,)]


def test_both_parsers_agree_and_chunking_does_not_matter() -> None:
    c, py = implementation("c"), implementation("py")
    body = b"".join(_row(name) for name in sorted(DOCUMENTS))
    whole = run(c, "ndjson", V, [body])
    assert run(py, "ndjson", V, [body]) == whole
    assert run(c, "ndjson", V, [body[i : i + 1] for i in range(len(body))]) == whole
    # Every document was either stored or quarantined: nothing lost, nothing raised.
    assert whole[1] == 95 + sum(outcome == ACCEPTED for outcome in I_OUTCOMES.values()) + \
        sum(_parse(c, name)[1] for name in I_LOSSY)
