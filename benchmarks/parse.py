"""Parser throughput: tinyingest's parsers vs ClickHouse's own, polars, pyarrow, msgspec.

Prints, from one run on this machine, rows/s, MB/s and peak RSS for each implementation
on the same files, then the ratio lines the parser is held to:

* ``events``: 1M rows of ``ts DateTime, user_id UInt64, event LowCardinality(String),
  value Float64`` (the shape of benchmarks/ingest.py), as NDJSON and as CSV;
* ``wide``: a 20-column web-analytics shape (nested ``geo``/``device`` objects in NDJSON,
  flattened in CSV; JSON escapes, quoted CSV fields, non-ASCII text, a Nullable column).

Each measurement runs in a fresh subprocess (``--child``): the child reads the file,
times only the parse (engine start-up and imports excluded), and its peak RSS comes from
``os.wait4``'s rusage of that child. Every implementation runs ``--runs`` times (best of
3 by default). All run on one core:

* ours: ``NDJSONParser`` / ``CSVParser`` fed 64 KiB chunks read from the file, with
  ``take_block()`` every 65,536 rows as the gateway does (the columns are built: Native-
  ready buffers); the pure-Python reference only on the first 50k rows (labelled);
* ClickHouse (chDB): ``SELECT * FROM file(path, JSONEachRow|CSV, 'structure')`` with
  ``max_threads=1, input_format_parallel_parsing=0``, output format ``Null`` (parse cost,
  no storage, no result transfer);
* polars ``read_ndjson`` / ``read_csv`` with ``POLARS_MAX_THREADS=1`` and an explicit
  schema; pyarrow ``json.read_json`` / ``csv.read_csv`` with ``use_threads=False`` (and
  once more converting every numeric column to numpy: ``+numpy``); msgspec: one
  ``Decoder(Struct)`` call per line into a list of Structs, then columns (``array``).

In JSON the peers keep ``ts`` as text (polars and pyarrow do not read this timestamp
form from JSON), which is less work than our DateTime conversion.

Data is generated deterministically into a temp dir (or ``--data-dir``, reused when the
files exist). Run: ``.venv/bin/python benchmarks/parse.py [--rows N] [--wide-rows N]``.
Peer libraries: ``pip install polars pyarrow msgspec`` (chDB: the ``embedded`` extra);
a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHUNK = 64 * 1024
BLOCK_ROWS = 65_536  # gateway.BLOCK_ROWS
PY_SLICE = 50_000

EVENTS = ["page_view", "click", "signup", "purchase", "scroll", "search", "logout"]

# -- data ------------------------------------------------------------------------------------


def event_rows(count: int, seed: int = 42) -> Iterator[tuple[str, int, str, float]]:
    rng = random.Random(seed)
    base = 1_700_000_000
    for i in range(count):
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(base + i // 10))
        yield ts, rng.randrange(1 << 40), EVENTS[rng.randrange(len(EVENTS))], \
            round(rng.random() * 1000, 3)


TITLES = ["Home", "Pricing & Plans", 'The "best" shoes', "Café au lait — recettes",
          "Über uns", "東京の天気", "Ofertas de verano: 50% dto.", "Привет, мир",
          "Line\nbreak\ttab", "Emoji 🎉 launch", "a, b, c", "back\\slash"]
PATHS = ["/", "/pricing", "/blog/2024/01/hello-world", "/search?q=red+shoes&page=2",
         "/products/12345", "/ja/天気", "/checkout/step-2", "/docs/api/v0/events"]
COUNTRIES = [("US", "New York"), ("DE", "München"), ("JP", "東京"), ("ES", "A Coruña"),
             ("FR", "Paris"), ("BR", "São Paulo"), ("GB", "London"), ("RU", "Москва")]
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0 Safari/537.36",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
          "curl/8.5.0"]
DEVICES = [("desktop", "Windows", "Chrome"), ("mobile", "iOS", "Safari"),
           ("tablet", "Android", "Firefox"), ("bot", "Linux", "curl")]
LOCALES = ["en-US", "de-DE", "ja-JP", "es-ES", "fr-FR", "pt-BR"]

WIDE_FLAT = [  # (name, ClickHouse type, jsonpath)
    ("timestamp", "DateTime", "$.timestamp"),
    ("session_id", "String", "$.session_id"),
    ("user_id", "UInt64", "$.user_id"),
    ("event", "LowCardinality(String)", "$.event"),
    ("url", "String", "$.url"),
    ("referrer", "String", "$.referrer"),
    ("title", "String", "$.title"),
    ("user_agent", "String", "$.user_agent"),
    ("locale", "LowCardinality(String)", "$.locale"),
    ("country", "LowCardinality(String)", "$.geo.country"),
    ("city", "String", "$.geo.city"),
    ("device_type", "LowCardinality(String)", "$.device.type"),
    ("os", "LowCardinality(String)", "$.device.os"),
    ("browser", "LowCardinality(String)", "$.device.browser"),
    ("screen_w", "UInt16", "$.screen_w"),
    ("screen_h", "UInt16", "$.screen_h"),
    ("duration_ms", "UInt32", "$.duration_ms"),
    ("scroll_depth", "Float32", "$.scroll_depth"),
    ("is_bot", "UInt8", "$.is_bot"),
    ("revenue", "Nullable(Float64)", "$.revenue"),
]
EVENTS_SCHEMA = [("ts", "DateTime", "$.ts"), ("user_id", "UInt64", "$.user_id"),
                 ("event", "LowCardinality(String)", "$.event"), ("value", "Float64", "$.value")]


def wide_rows(count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    base = 1_700_000_000
    for i in range(count):
        country, city = COUNTRIES[rng.randrange(len(COUNTRIES))]
        dtype, os_name, browser = DEVICES[rng.randrange(len(DEVICES))]
        yield {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + i // 5)),
            "session_id": f"{rng.getrandbits(64):016x}-{rng.getrandbits(32):08x}",
            "user_id": rng.randrange(1 << 48),
            "event": EVENTS[rng.randrange(len(EVENTS))],
            "url": "https://shop.example.com" + PATHS[rng.randrange(len(PATHS))],
            "referrer": rng.choice(["", "https://www.google.com/", "https://t.co/x?y=1",
                                    "https://news.ycombinator.com/item?id=1"]),
            "title": TITLES[rng.randrange(len(TITLES))],
            "user_agent": AGENTS[rng.randrange(len(AGENTS))],
            "locale": LOCALES[rng.randrange(len(LOCALES))],
            "geo": {"country": country, "city": city},
            "device": {"type": dtype, "os": os_name, "browser": browser},
            "screen_w": rng.choice([390, 1280, 1440, 1920, 2560]),
            "screen_h": rng.choice([844, 720, 900, 1080, 1440]),
            "duration_ms": rng.randrange(60_000),
            "scroll_depth": round(rng.random(), 2),
            "is_bot": 1 if dtype == "bot" else 0,
            "revenue": round(rng.random() * 200, 2) if rng.random() < 0.1 else None,
        }


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _flat(row: dict[str, Any]) -> list[Any]:
    out = []
    for _, _, path in WIDE_FLAT:
        node: Any = row
        for key in path[2:].split("."):
            node = node[key]
        out.append(node)
    return out


def generate(data_dir: Path, rows: int, wide: int) -> dict[str, Path]:
    files = {name: data_dir / f"{name}.{rows if name.startswith('events') else wide}"
             for name in ("events.ndjson", "events.csv", "wide.ndjson", "wide.csv")}
    if all(path.exists() for path in files.values()):
        return files
    with open(files["events.ndjson"], "w", encoding="utf-8") as nd, \
            open(files["events.csv"], "w", encoding="utf-8") as csv:
        for ts, user, event, value in event_rows(rows):
            nd.write(json.dumps({"ts": ts, "user_id": user, "event": event, "value": value},
                                separators=(",", ":")) + "\n")
            csv.write(f"{ts},{user},{event},{value}\n")
    with open(files["wide.ndjson"], "w", encoding="utf-8") as nd, \
            open(files["wide.csv"], "w", encoding="utf-8") as csv:
        for row in wide_rows(wide):
            nd.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
            csv.write(",".join(_csv_field(v) for v in _flat(row)) + "\n")
    return files


# -- the measured implementations (run in the child) ----------------------------------------


def _schema(dataset: str) -> list[tuple[str, str, str]]:
    return EVENTS_SCHEMA if dataset == "events" else WIDE_FLAT


def run_ours(path: str, dataset: str, fmt: str, impl: str) -> tuple[float, int]:
    if impl == "py":
        from tinyingest import _pyparser as module
    else:
        from tinyingest import _native as module  # type: ignore[attr-defined,no-redef]
    from tinyingest.schema import ColumnSpec

    columns = [ColumnSpec.build(name, ch_type, jsonpath) for name, ch_type, jsonpath in
               _schema(dataset)]
    head = b""
    if impl == "py":  # the reference parser: only the first PY_SLICE rows
        with open(path, "rb") as f:
            head = b"".join(f.readline() for _ in range(PY_SLICE))
    start = time.perf_counter()
    parser = module.NDJSONParser(columns) if fmt == "ndjson" else \
        module.CSVParser(columns, header=False)
    rows = 0
    pending = 0
    nbytes = 0
    with open(path, "rb", buffering=0) as f:
        # Streamed as the gateway receives a body: the file is never held whole.
        if impl == "py":
            chunks: Iterator[bytes] = (head[i : i + CHUNK] for i in range(0, len(head), CHUNK))
        else:
            chunks = iter(lambda: f.read(CHUNK), b"")
        for chunk in chunks:
            nbytes += len(chunk)
            pending += parser.feed(chunk)
            if pending >= BLOCK_ROWS:
                block = parser.take_block()
                rows += block.num_rows
                assert not block.errors, block.errors[:3]
                pending = 0
    parser.finish()
    block = parser.take_block()
    rows += block.num_rows
    assert not block.errors, block.errors[:3]
    return time.perf_counter() - start, nbytes


def _ch_structure(dataset: str) -> str:
    if dataset == "events":
        return ", ".join(f"{name} {ch_type}" for name, ch_type, _ in EVENTS_SCHEMA)
    return ", ".join(f"{name} {ch_type}" for name, ch_type, _ in WIDE_FLAT)


def _ch_json_structure() -> str:
    parts = []
    for name, ch_type, path in WIDE_FLAT:
        keys = path[2:].split(".")
        if len(keys) == 1:
            parts.append(f"{name} {ch_type}")
    parts.insert(9, "geo Tuple(country LowCardinality(String), city String)")
    parts.insert(10, "device Tuple(type LowCardinality(String), os LowCardinality(String), "
                     "browser LowCardinality(String))")
    return ", ".join(parts)


def run_chdb(path: str, dataset: str, fmt: str, impl: str) -> tuple[float, int]:
    import chdb

    chdb.query("SELECT 1", "CSV")  # start the engine outside the timing
    structure = _ch_structure(dataset)
    if dataset == "wide" and fmt == "ndjson":
        structure = _ch_json_structure()
    ch_format = "JSONEachRow" if fmt == "ndjson" else "CSV"
    settings = ("max_threads=1, input_format_parallel_parsing=0, "
                "date_time_input_format='best_effort'")
    sql = (f"SELECT * FROM file('{path}', {ch_format}, '{structure}') "
           f"SETTINGS {settings}")
    check = chdb.query(f"SELECT count() FROM file('{path}', {ch_format}, '{structure}') "
                       f"SETTINGS {settings}", "CSV")
    assert int(str(check).strip()) > 0
    start = time.perf_counter()
    chdb.query(sql, "Null")
    return time.perf_counter() - start, os.path.getsize(path)


def run_polars(path: str, dataset: str, fmt: str, impl: str) -> tuple[float, int]:
    import polars as pl

    types = {"DateTime": pl.String if fmt == "ndjson" else pl.Datetime("us"),
             "UInt64": pl.UInt64, "UInt32": pl.UInt32, "UInt16": pl.UInt16,
             "UInt8": pl.UInt8, "Float64": pl.Float64, "Float32": pl.Float32,
             "String": pl.String,
             # polars' NDJSON reader panics on Categorical inside a Struct.
             "LowCardinality(String)": pl.Categorical if fmt == "csv" else pl.String,
             "Nullable(Float64)": pl.Float64}
    if fmt == "ndjson":
        # polars' NDJSON reader panics ("unexpected dtype") on UInt8/UInt16 in a schema.
        types.update({"UInt64": pl.Int64, "UInt32": pl.Int64, "UInt16": pl.Int64,
                      "UInt8": pl.Int64, "Float32": pl.Float64})
    flat = {name: types[ch_type] for name, ch_type, _ in _schema(dataset)}
    start = time.perf_counter()
    if fmt == "csv":
        frame = pl.read_csv(path, has_header=False, new_columns=list(flat), schema=flat)
    else:
        schema: dict[str, Any] = {}
        for name, ch_type, jpath in _schema(dataset):
            keys = jpath[2:].split(".")
            if len(keys) == 1:
                schema[name] = flat[name]
            else:
                fields = schema.setdefault(keys[0], {})
                fields[keys[1]] = flat[name]
        schema = {k: pl.Struct(v) if isinstance(v, dict) else v for k, v in schema.items()}
        frame = pl.read_ndjson(path, schema=schema)
    elapsed = time.perf_counter() - start
    assert frame.height > 0
    return elapsed, os.path.getsize(path)


def run_pyarrow(path: str, dataset: str, fmt: str, impl: str) -> tuple[float, int]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    import numpy  # noqa: F401  (imported by to_numpy() otherwise: not parse time)

    # Warm up the numpy interop (its first use costs ~0.2 s of imports).
    pa.chunked_array([[1], [2]]).to_numpy()
    timestamp = pa.timestamp("s", "UTC") if dataset == "wide" else pa.timestamp("s")
    types = {"DateTime": pa.string() if fmt == "ndjson" else timestamp,
             "UInt64": pa.uint64(), "UInt32": pa.uint32(), "UInt16": pa.uint16(),
             "UInt8": pa.uint8(), "Float64": pa.float64(), "Float32": pa.float32(),
             "String": pa.string(), "LowCardinality(String)": pa.string(),
             "Nullable(Float64)": pa.float64()}
    names = [name for name, _, _ in _schema(dataset)]
    start = time.perf_counter()
    if fmt == "csv":
        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(use_threads=False, column_names=names),
            # The wide file has newlines in quoted fields.
            parse_options=pcsv.ParseOptions(newlines_in_values=dataset == "wide"),
            convert_options=pcsv.ConvertOptions(
                column_types={name: types[ch] for name, ch, _ in _schema(dataset)}))
    else:
        fields: list[Any] = []
        nested: dict[str, list[Any]] = {}
        for name, ch_type, jpath in _schema(dataset):
            keys = jpath[2:].split(".")
            if len(keys) == 1:
                fields.append(pa.field(name, types[ch_type]))
            else:
                if keys[0] not in nested:
                    nested[keys[0]] = []
                    fields.append(keys[0])
                nested[keys[0]].append(pa.field(keys[1], types[ch_type]))
        schema = pa.schema([f if not isinstance(f, str) else pa.field(f, pa.struct(nested[f]))
                            for f in fields])
        table = pjson.read_json(path, read_options=pjson.ReadOptions(use_threads=False),
                                parse_options=pjson.ParseOptions(explicit_schema=schema))
    if impl == "numpy":
        for column in table.columns:
            if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or \
                    pa.types.is_timestamp(column.type):
                column.to_numpy()
    elapsed = time.perf_counter() - start
    assert table.num_rows > 0
    return elapsed, os.path.getsize(path)


def run_msgspec(path: str, dataset: str, fmt: str, impl: str) -> tuple[float, int]:
    from array import array

    import msgspec

    if dataset == "events":
        class Event(msgspec.Struct):
            ts: str
            user_id: int
            event: str
            value: float

        decoder = msgspec.json.Decoder(Event)
        with open(path, "rb") as f:
            data = f.read()
        start = time.perf_counter()
        rows = [decoder.decode(line) for line in data.splitlines()]
        columns = (
            [r.ts for r in rows], array("Q", [r.user_id for r in rows]),
            [r.event for r in rows], array("d", [r.value for r in rows]),
        )
        elapsed = time.perf_counter() - start
        assert len(columns[1]) == len(rows)
        return elapsed, len(data)

    # defstruct: class bodies in a function do not see each other under
    # `from __future__ import annotations`.
    geo = msgspec.defstruct("Geo", [("country", str), ("city", str)])
    device = msgspec.defstruct("Device", [("type", str), ("os", str), ("browser", str)])
    py_types = {"DateTime": str, "String": str, "LowCardinality(String)": str,
                "Nullable(Float64)": float | None, "Float32": float}
    fields: list[tuple[str, Any]] = []
    for name, ch_type, jpath in WIDE_FLAT:
        key = jpath[2:].split(".")[0]
        if key == "geo" or key == "device":
            if all(f[0] != key for f in fields):
                fields.append((key, geo if key == "geo" else device))
        else:
            fields.append((name, py_types.get(ch_type, int)))
    hit = msgspec.defstruct("Hit", fields)

    decoder = msgspec.json.Decoder(hit)
    with open(path, "rb") as f:
        data = f.read()
    start = time.perf_counter()
    rows = [decoder.decode(line) for line in data.splitlines()]
    getters: list[Callable[[Any], Any]] = []
    for name, _, jpath in WIDE_FLAT:
        keys = jpath[2:].split(".")
        if len(keys) == 1:
            getters.append(lambda r, k=keys[0]: getattr(r, k))
        else:
            getters.append(lambda r, a=keys[0], b=keys[1]: getattr(getattr(r, a), b))
    columns = [[get(r) for r in rows] for get in getters]
    elapsed = time.perf_counter() - start
    assert len(columns[0]) == len(rows)
    return elapsed, len(data)


RUNNERS: dict[str, Callable[[str, str, str, str], tuple[float, int]]] = {
    "ours": run_ours, "chdb": run_chdb, "polars": run_polars, "pyarrow": run_pyarrow,
    "msgspec": run_msgspec,
}


def child(args: list[str]) -> None:
    runner, impl, dataset, fmt, path, rows = args
    elapsed, nbytes = RUNNERS[runner](path, dataset, fmt, impl)
    count = min(int(rows), PY_SLICE) if (runner, impl) == ("ours", "py") else int(rows)
    print(json.dumps({"seconds": elapsed, "bytes": nbytes, "rows": count}))


# -- the parent ------------------------------------------------------------------------------


def spawn(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes, int]:
    """Run argv; (exit code, stdout, stderr, peak RSS in KiB of that child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss


def bench(runner: str, impl: str, dataset: str, fmt: str, path: Path, rows: int,
          runs: int) -> dict[str, Any] | str:
    env = dict(os.environ, POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1",
               ARROW_NUM_THREADS="1")
    best: dict[str, Any] | None = None
    peak = 0
    for _ in range(runs):
        code, out, err, rss = spawn(
            [sys.executable, __file__, "--child", runner, impl, dataset, fmt, str(path),
             str(rows)], env)
        if code != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            return (lines[-1] if lines else f"exit {code}")[:100]
        result = json.loads(out)
        peak = max(peak, rss)
        if best is None or result["seconds"] < best["seconds"]:
            best = result
    assert best is not None
    best["rss_mib"] = peak / 1024
    return best


CASES = [  # (label, runner, impl, formats)
    ("tinyingest (C)", "ours", "c", ("ndjson", "csv")),
    (f"tinyingest (pure Python, first {PY_SLICE // 1000}k rows)", "ours", "py",
     ("ndjson", "csv")),
    ("ClickHouse (chDB, 1 thread)", "chdb", "", ("ndjson", "csv")),
    ("polars (1 thread)", "polars", "", ("ndjson", "csv")),
    ("pyarrow (1 thread)", "pyarrow", "", ("ndjson", "csv")),
    ("pyarrow (1 thread) +numpy", "pyarrow", "numpy", ("ndjson", "csv")),
    ("msgspec (Structs -> columns)", "msgspec", "", ("ndjson",)),
]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="events rows")
    ap.add_argument("--wide-rows", type=int, default=200_000, help="wide rows")
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs")
    ap.add_argument("--data-dir", help="keep the generated files here (reused)")
    ap.add_argument("--only", help="comma-separated runners (ours,chdb,polars,pyarrow,msgspec)")
    args = ap.parse_args()
    tmp = None
    if args.data_dir:
        data_dir = Path(args.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tinyingest-bench-")
        data_dir = Path(tmp.name)
    only = set(args.only.split(",")) if args.only else None
    try:
        files = generate(data_dir, args.rows, args.wide_rows)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, best of {args.runs}, "
              f"one core per implementation")
        for name, path in files.items():
            print(f"  {name}: {path.stat().st_size / 1e6:.1f} MB")
        results: dict[tuple[str, str, str], dict[str, Any] | str] = {}
        header = f"{'implementation':<46} {'file':<13} {'rows/s':>12} {'MB/s':>8} {'RSS MiB':>8}"
        print()
        print(header)
        print("-" * len(header))
        for dataset in ("events", "wide"):
            rows = args.rows if dataset == "events" else args.wide_rows
            for fmt in ("ndjson", "csv"):
                path = files[f"{dataset}.{fmt}"]
                for label, runner, impl, formats in CASES:
                    if fmt not in formats or (only and runner not in only):
                        continue
                    result = bench(runner, impl, dataset, fmt, path, rows, args.runs)
                    results[(runner + impl, dataset, fmt)] = result
                    where = f"{dataset}.{fmt}"
                    if isinstance(result, str):
                        print(f"{label:<46} {where:<13} unavailable: {result}")
                    else:
                        secs = result["seconds"]
                        print(f"{label:<46} {where:<13} {result['rows'] / secs:>12,.0f} "
                              f"{result['bytes'] / secs / 1e6:>8.1f} {result['rss_mib']:>8.0f}",
                              flush=True)
                print()

        def speed(key: str, dataset: str, fmt: str) -> float | None:
            result = results.get((key, dataset, fmt))
            if not isinstance(result, dict):
                return None
            return float(result["bytes"]) / float(result["seconds"])

        print("ratios (MB/s of tinyingest C / MB/s of the peer; targets in brackets)")
        for dataset in ("events", "wide"):
            for fmt, peer, name, target in (
                    ("ndjson", "chdb", "ClickHouse JSONEachRow", 2.0),
                    ("ndjson", "polars", "polars.read_ndjson", 2.5),
                    ("ndjson", "pyarrow", "pyarrow.json", None),
                    ("ndjson", "msgspec", "msgspec", None),
                    ("csv", "chdb", "ClickHouse CSV", 2.0),
                    ("csv", "pyarrownumpy", "pyarrow.csv +numpy", 1.0),
                    ("csv", "polars", "polars.read_csv", None)):
                ours = speed("oursc", dataset, fmt)
                theirs = speed(peer, dataset, fmt)
                if ours is None or theirs is None:
                    continue
                ratio = ours / theirs
                goal = ""
                if target is not None and dataset == "events":
                    goal = f"  [>= {target:.1f}x: {'met' if ratio >= target else 'NOT met'}]"
                where = f"{dataset}.{fmt}"
                print(f"  {where:<13} vs {name:<24} {ratio:5.2f}x{goal}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
