"""TINYINGEST_NO_EXTENSIONS / TINYINGEST_REQUIRE_EXTENSIONS pick the parser as documented."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "from tinyingest import parser; print(parser.IMPLEMENTATION, parser.NDJSONParser.__module__)"


def _probe(env: dict[str, str], extra: str = "") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYINGEST_")}
    return subprocess.run([sys.executable, "-c", extra + PROBE], capture_output=True, text=True,
                          env={**clean, **env}, timeout=60)


def test_compiled_parser_is_the_default() -> None:
    assert _probe({}).stdout.split() == ["c", "tinyingest._native"]


def test_no_extensions_forces_the_reference_parser() -> None:
    assert _probe({"TINYINGEST_NO_EXTENSIONS": "1"}).stdout.split() == \
        ["py", "tinyingest._pyparser"]


@pytest.mark.parametrize("require", ["0", "1"])
def test_missing_extension_falls_back_or_fails(require: str) -> None:
    # Simulate a machine without a compiler: the compiled module cannot be imported.
    hide = "import sys; sys.modules['tinyingest._native'] = None; "
    result = _probe({"TINYINGEST_REQUIRE_EXTENSIONS": require}, hide)
    if require == "1":
        assert result.returncode != 0 and "tinyingest._native" in result.stderr
    else:
        assert result.stdout.split() == ["py", "tinyingest._pyparser"]
