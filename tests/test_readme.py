"""The README's shell examples run as written (issue 20, item 7).

Every ```sh / ```bash / ```shell block of README.md runs, in order, in one ``bash -e``
session (as a reader types them into one shell beside ``make serve``: ``TOKEN`` set in
one block is used by the next), against a gateway started as ``make serve`` starts it:
``tinyingest init example`` (when missing), then ``tinyingest serve --project example``
in the same directory, data dir ``./.tinyingest``, the admin token generated there.

The one liberty taken, so that the test runs beside other gateways: the gateway listens
on a free port, and ``127.0.0.1:7181`` in the blocks is replaced by that address. The
directory also gets ``.venv``, a link to the virtualenv running the tests (the README
calls ``.venv/bin/...`` as ``make`` installs it).

A block preceded by ``<!-- not-run: reason -->`` is not run (``make`` itself, a second
gateway); the test lists those, and fails if that list changes unnoticed. A ``# -> text``
comment in a block is an expected answer: the block's output must contain it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"

_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")
_SHELLS = ("sh", "bash", "shell")

#: The blocks the README marks as not run, by their first line: changing them is a
#: decision to make here too.
EXPECTED_SKIPPED = [
    "make serve   # venv + install + start the gateway on the embedded engine, example project",
    ".venv/bin/tinyingest serve --project example \\",
]


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence in README.md
    code: str
    skip_reason: str | None


def shell_blocks(text: str) -> list[Block]:
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) not in _SHELLS:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _NOT_RUN.search(before)
        blocks.append(Block(text.count("\n", 0, match.start()) + 1, match.group(2),
                            marker.group(1) if marker else None))
    return blocks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_readme_marks_the_blocks_it_does_not_run() -> None:
    blocks = shell_blocks(README.read_text())
    skipped = [block for block in blocks if block.skip_reason is not None]
    print("\nREADME shell blocks not run:")
    for block in skipped:
        print(f"  README.md:{block.line}: {block.skip_reason}")
    assert [block.code.splitlines()[0] for block in skipped] == EXPECTED_SKIPPED
    assert all(block.skip_reason for block in skipped)  # each says why
    assert len(blocks) - len(skipped) >= 3


def test_readme_shell_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = [block for block in shell_blocks(README.read_text()) if block.skip_reason is None]
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix)
    env = {key: value for key, value in os.environ.items()
           if key != "TINYINGEST_ADMIN_TOKEN"}  # generated on first start, as make serve
    subprocess.run([sys.executable, "-m", "tinyingest", "init", "example"], cwd=work,
                   check=True, capture_output=True, env=env)
    port = _free_port()
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "tinyingest", "serve", "--project", "example",
             "--port", str(port)], cwd=work, stdout=log_file, stderr=subprocess.STDOUT,
            env={**env, "TINYINGEST_FLUSH_INTERVAL": "0.05"})
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", gateway, log_path)
        script = ["set -o pipefail"]
        for number, block in enumerate(blocks):
            code = block.code.replace("127.0.0.1:7181", f"127.0.0.1:{port}")
            script += [f"echo '### README.md:{block.line}' >&2",
                       f"echo '### README.md:{block.line}'", code,
                       f"echo '### ok {number}'"]
        result = subprocess.run(["bash", "-e", "-c", "\n".join(script)], cwd=work,
                                capture_output=True, text=True, timeout=120, env=env)
    finally:
        gateway.terminate()
        code = gateway.wait(60)
    outputs = _by_block(result.stdout)
    last = re.findall(r"### (README\.md:\d+)", result.stderr)
    assert result.returncode == 0, (
        f"the block at {last[-1] if last else '?'} failed (exit {result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    for block in blocks:
        for expected in re.findall(r"#\s*->\s*(.+)$", block.code, re.M):
            assert expected.strip() in outputs[block.line], (block.line, outputs[block.line])
    assert code == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text()


def _wait_healthy(url: str, gateway: subprocess.Popen[bytes], log_path: Path) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            pytest.fail(f"gateway exited with {gateway.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("gateway did not answer /healthz:\n" + log_path.read_text())


def _by_block(stdout: str) -> dict[int, str]:
    """Each block's output, by the line of its fence."""
    parts = re.split(r"^### README\.md:(\d+)\n", stdout, flags=re.M)
    return {int(line): text for line, text in zip(parts[1::2], parts[2::2])}
