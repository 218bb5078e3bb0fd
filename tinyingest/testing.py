"""Test harness: a private, throw-away ClickHouse server.

:class:`ClickHouseServer` runs a real ``clickhouse-server`` (Debian's package or any
other build on ``PATH``) as a child process, with its own config, data directory and
free loopback ports, in the spirit of :mod:`tornado.testing`. The test suite starts one
per session; downstream projects can do the same::

    from tinyingest.testing import ClickHouseServer

    with ClickHouseServer() as server:
        sink = ClickHouseSink(server.url)
        ...

Nothing is ever skipped: if the binary is missing, :meth:`ClickHouseServer.start`
raises :class:`RuntimeError` saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Self
from xml.sax.saxutils import escape

__all__ = ["ClickHouseServer"]

_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>{log_level}</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <mark_cache_size>67108864</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
        <!-- 2: reads only, but the gateway may still set its limits per query -->
        <reader>
            <max_memory_usage>4000000000</max_memory_usage>
            <readonly>2</readonly>
        </reader>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <reader>
            <password>reader</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>reader</profile>
            <quota>default</quota>
        </reader>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


def _free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ClickHouseServer:
    """A private ``clickhouse-server`` on free loopback ports, with a temporary data dir.

    :param binary: the server executable; default: ``clickhouse-server`` on ``PATH``,
        then ``/usr/sbin/clickhouse-server``.
    :param startup_timeout: seconds :meth:`start` waits for ``SELECT 1`` to answer.
    :param log_level: the server's ``<logger><level>`` (its log lands in the data dir
        and its tail is shown when startup fails).

    The server runs in UTC and accepts user ``default`` without a password from
    127.0.0.1 only. :meth:`stop` kills it and deletes every file it wrote.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        startup_timeout: float = 30.0,
        log_level: str = "warning",
    ) -> None:
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._log_level = log_level
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tcp_port = 0
        self._http_port = 0

    # -- properties ---------------------------------------------------------------

    @property
    def tcp_port(self) -> int:
        """The native-protocol port (only valid once started)."""
        return self._tcp_port

    @property
    def http_port(self) -> int:
        """The HTTP interface port (only valid once started)."""
        return self._http_port

    @property
    def url(self) -> str:
        """``clickhouse://default:@127.0.0.1:<tcp_port>/default``, for ClickHouseSink."""
        return f"clickhouse://default:@127.0.0.1:{self._tcp_port}/default"

    def reader_url(self, database: str = "default") -> str:
        """The same server as user ``reader`` (profile ``readonly=2``: reads only)."""
        return f"clickhouse://reader:reader@127.0.0.1:{self._tcp_port}/{database}"

    @property
    def pid(self) -> int | None:
        """The server's process id, or None when it is not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def data_dir(self) -> str | None:
        """The temporary directory holding config, data and logs."""
        return self._dir

    # -- lifecycle ----------------------------------------------------------------

    def _find_binary(self) -> str:
        if self._binary is not None:
            if not os.access(self._binary, os.X_OK):
                raise RuntimeError(f"clickhouse-server binary {self._binary!r} is not executable")
            return self._binary
        found = shutil.which("clickhouse-server")
        if found is None and os.access("/usr/sbin/clickhouse-server", os.X_OK):
            found = "/usr/sbin/clickhouse-server"
        if found is None:
            raise RuntimeError(
                "clickhouse-server was not found on PATH or in /usr/sbin; the tests need a real "
                "ClickHouse server: run `apt-get install clickhouse-server` (Debian/Ubuntu) or "
                "pass ClickHouseServer(binary=...)"
            )
        return found

    def start(self) -> None:
        """Write the config, start the server and wait until ``SELECT 1`` answers.

        :raises RuntimeError: the binary is missing, or the server did not answer within
            ``startup_timeout`` (the message includes the tail of its logs).
        """
        if self._proc is not None:
            raise RuntimeError("ClickHouseServer is already started")
        binary = self._find_binary()
        self._dir = tempfile.mkdtemp(prefix="tinyingest-clickhouse-")
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            os.mkdir(os.path.join(self._dir, sub))
        self._tcp_port = _free_port()
        self._http_port = _free_port()
        while self._http_port == self._tcp_port:
            self._http_port = _free_port()
        config = os.path.join(self._dir, "config.xml")
        with open(config, "w") as f:
            f.write(
                _CONFIG.format(
                    dir=escape(self._dir),
                    tcp_port=self._tcp_port,
                    http_port=self._http_port,
                    log_level=escape(self._log_level),
                )
            )
        with open(os.path.join(self._dir, "users.xml"), "w") as f:
            f.write(_USERS)
        self._launch(binary, config)

    def _launch(self, binary: str, config: str) -> None:
        assert self._dir is not None
        with open(os.path.join(self._dir, "log", "stdout.log"), "ab") as out:
            self._proc = subprocess.Popen(
                [binary, f"--config-file={config}"],
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the test run must not race our stop()
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL the server (a crash); its data and ports stay for :meth:`restart`."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the server hangs, connections stay open."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start the server again on the same data and ports (after :meth:`kill`)."""
        if self._dir is None or self._proc is not None:
            raise RuntimeError("restart() follows kill()")
        self._launch(self._find_binary(), os.path.join(self._dir, "config.xml"))

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited with code {self._proc.returncode} during "
                    f"startup\n{self.log_tail()}"
                )
            try:
                if self._select_one():
                    return
            except OSError as e:
                last_error = str(e)
            time.sleep(0.1)
        raise RuntimeError(
            f"clickhouse-server did not answer SELECT 1 within {self._startup_timeout:g} s "
            f"({last_error})\n{self.log_tail()}"
        )

    def _select_one(self) -> bool:
        # Over HTTP: no dependency on the driver, and the HTTP and TCP listeners are
        # opened together, after the tables are loaded.
        with socket.create_connection(("127.0.0.1", self._http_port), timeout=2) as sock:
            sock.sendall(
                b"GET /?query=SELECT%201 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
            )
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n", 1)[0] and (
            body.strip() == b"1"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's logs (error log, main log, stdout)."""
        if self._dir is None:
            return ""
        parts = []
        for name in ("clickhouse-server.err.log", "clickhouse-server.log", "stdout.log"):
            path = os.path.join(self._dir, "log", name)
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
            if text:
                parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` s) and delete its dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: The admin token of the gateways the tests start (long and random enough to be accepted).
TEST_ADMIN_TOKEN = "test-admin-token-9f3c61d2e8b74a05c1f6e9a2d7b3"


class GatewayProcess:
    """``tinyingest serve`` as a child process on a free loopback port.

    :param project_dir: the datafiles to serve.
    :param clickhouse_url: a server (``ClickHouseServer.url``), or None for the
        embedded engine in ``data_dir``.
    :param env: extra environment (``TINYINGEST_*`` settings).
    :param args: extra ``serve`` arguments, e.g. ``["--workers", "2"]``.

    ``url`` is the base URL and ``token`` the admin token. :meth:`stop` sends SIGTERM
    (the gateway flushes and exits 0) and returns the exit code.

    .. versionadded:: 0.1
    """

    def __init__(self, project_dir: str, data_dir: str, *, clickhouse_url: str | None = None,
                 env: dict[str, str] | None = None, token: str = TEST_ADMIN_TOKEN,
                 startup_timeout: float = 60.0, args: list[str] | None = None) -> None:
        self.project_dir = project_dir
        self.data_dir = data_dir
        self.clickhouse_url = clickhouse_url
        self.token = token
        self.port = 0
        self._env = dict(env or {})
        self._args = list(args or [])
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = os.path.join(data_dir, "gateway.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        import sys
        import urllib.request

        os.makedirs(self.data_dir, exist_ok=True)
        self.port = _free_port()
        command = [sys.executable, "-m", "tinyingest", "serve", "--project", self.project_dir,
                   "--data-dir", self.data_dir, "--port", str(self.port)]
        if self.clickhouse_url:
            command += ["--clickhouse", self.clickhouse_url]
        command += self._args
        env = {**os.environ, "TINYINGEST_ADMIN_TOKEN": self.token, **self._env}
        with open(self._log_path, "ab") as log_file:
            self._proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                          env=env)
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self._proc.returncode}:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not answer /healthz:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as file:
                return "".join(file.readlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the gateway (a crash); :meth:`start` runs it again on the same data dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


#: More than an INSERT query packet (without its data) takes.
_QUERY_BYTES = 2048


class FaultProxy:
    """A TCP relay on a free loopback port, with faults to switch on at run time.

    Put it between the gateway and ClickHouse (``FaultProxy(server.tcp_port).url()``) and:

    * :meth:`swallow_replies`: once a client has sent more than a query's worth of bytes
      (its data) after this is switched on, the server's answers on that connection are
      dropped: the INSERT reached ClickHouse, its acknowledgement never comes back (the
      "link cut after data sent" case);
    * :meth:`reset_all`: every open connection is reset (RST), as a network failure.

    Runs its own thread; :meth:`close` stops it.

    .. versionadded:: 0.1
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        import threading

        self._target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._swallow = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str = "default") -> str:
        """The ClickHouse URL through this proxy."""
        return f"clickhouse://default:@127.0.0.1:{self.port}/{database}"

    def swallow_replies(self, on: bool = True) -> None:
        if on:
            self._swallow.set()
        else:
            self._swallow.clear()

    def reset_all(self) -> None:
        import struct

        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:  # SO_LINGER 0: close() sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.reset_all()

    def _accept(self) -> None:
        import threading

        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            sent = [0]  # client bytes since swallow_replies() was switched on
            threading.Thread(target=self._pump, args=(client, upstream, False, sent),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True, sent),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool,
              sent: list[int]) -> None:
        try:
            while chunk := source.recv(65536):
                if not self._swallow.is_set():
                    sent[0] = 0
                elif not replies:
                    sent[0] += len(chunk)
                elif sent[0] > _QUERY_BYTES:
                    continue  # the data went through; its answer is lost
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
