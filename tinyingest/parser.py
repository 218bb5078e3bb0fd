"""The parser facade: picks the compiled parsers or the pure-Python reference.

``TINYINGEST_NO_EXTENSIONS=1`` forces the pure-Python parsers;
``TINYINGEST_REQUIRE_EXTENSIONS=1`` (CI, deploy) makes a missing extension an error.
:data:`IMPLEMENTATION` says which one is active ("c" or "py"); it is logged at startup
and shown on ``/healthz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from tinyingest import _pyparser
from tinyingest.block import Block


class Parser(Protocol):
    """What both implementations of both formats offer (see ``_native.pyi``)."""

    def feed(self, data: bytes | bytearray | memoryview) -> int: ...
    def finish(self) -> int: ...
    def take_block(self) -> Block: ...
    @property
    def num_rows(self) -> int: ...


NDJSONParserPy = _pyparser.NDJSONParser
CSVParserPy = _pyparser.CSVParser

NDJSONParser: Callable[..., Parser]
CSVParser: Callable[..., Parser]

try:
    if os.environ.get("TINYINGEST_NO_EXTENSIONS") == "1":
        raise ImportError("TINYINGEST_NO_EXTENSIONS=1")
    from tinyingest import _native
except ImportError:
    if os.environ.get("TINYINGEST_REQUIRE_EXTENSIONS") == "1":
        raise
    NDJSONParserC = None
    CSVParserC = None
    NDJSONParser = NDJSONParserPy
    CSVParser = CSVParserPy
    IMPLEMENTATION = "py"
else:
    NDJSONParserC = _native.NDJSONParser
    CSVParserC = _native.CSVParser
    NDJSONParser = _native.NDJSONParser
    CSVParser = _native.CSVParser
    IMPLEMENTATION = "c"
