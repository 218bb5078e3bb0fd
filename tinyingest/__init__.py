"""tinyingest: a self-hosted, Tinybird-compatible real-time ingestion gateway for ClickHouse."""

__version__ = "0.1.0"
