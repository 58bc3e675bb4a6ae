"""The shipped deployment (deploy/), stood up for real on loopback: nginx, N daphne, Redis.

The files an operator copies are rendered with the test's ports and paths only, never
rewritten: nginx runs the shipped site file, and each daphne runs the command line of the
shipped systemd unit. `FakeSystemd` plays systemd's part for `systemctl restart`: SIGTERM
(the unit's KillSignal), wait for the exit (at most its TimeoutStopSec), start again.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from peers.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "voicebot@.service"
SITE = DEPLOY / "nginx-voicebot.conf"
ROLLING_RESTART = DEPLOY / "rolling-restart"

# What the shipped files say, and what the tests put in their place.
SHIPPED_CHECKOUT = "/srv/voicebot"
SHIPPED_HOST = "voice.example.com"
SHIPPED_STATIC_ROOT = "/srv/voicebot/staticfiles/"
SHIPPED_CERTIFICATE = "/etc/ssl/voicebot/fullchain.pem"
SHIPPED_KEY = "/etc/ssl/voicebot/privkey.pem"
SHIPPED_PORTS = (8001, 8002)


def unit_settings(text: str | None = None) -> dict[str, str]:
    """The unit's `Key=value` lines (the last one wins, as for systemd's single values)."""
    text = UNIT.read_text() if text is None else text
    pairs = re.findall(r"^([A-Za-z]+)=(.*)$", text, flags=re.MULTILINE)
    return {key: value.strip() for key, value in pairs}


def render_unit(*, port: int | None = None) -> str:
    """The shipped unit for this checkout and virtualenv (and instance `port`, if given)."""
    text = UNIT.read_text()
    venv_bin = f"{SHIPPED_CHECKOUT}/.venv/bin/"
    assert venv_bin in text, "the unit no longer runs daphne from the checkout's virtualenv"
    text = text.replace(venv_bin, str(Path(sys.executable).parent) + "/")
    text = text.replace(SHIPPED_CHECKOUT, str(ROOT))
    if port is not None:
        text = text.replace("%i", str(port))
    return text


def replace_exactly(text: str, old: str, new: str, *, count: int) -> str:
    """Replace `old`, which must occur `count` times: a changed shipped file fails loudly."""
    found = text.count(old)
    assert found == count, f"expected {old!r} {count} time(s) in the shipped file, found {found}"
    return text.replace(old, new)


def render_site(
    *,
    https_port: int,
    http_port: int,
    upstream_ports: list[int],
    static_root: Path,
    certificate: Path,
    key: Path,
    host: str,
) -> str:
    """The shipped nginx site with the test's ports, paths, certificate and host name."""
    text = SITE.read_text()
    text = replace_exactly(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;", count=1)
    text = replace_exactly(text, "listen 80;", f"listen 127.0.0.1:{http_port};", count=1)
    # No IPv6 on every test machine; the IPv4 listeners above carry the test.
    text = replace_exactly(text, "listen [::]:443 ssl;", "", count=1)
    text = replace_exactly(text, "listen [::]:80;", "", count=1)
    text = replace_exactly(text, f"server_name {SHIPPED_HOST};", f"server_name {host};", count=2)
    text = replace_exactly(text, SHIPPED_STATIC_ROOT, f"{static_root}/", count=1)
    text = replace_exactly(text, SHIPPED_CERTIFICATE, str(certificate), count=1)
    text = replace_exactly(text, SHIPPED_KEY, str(key), count=1)
    servers = re.findall(r"^\s*server 127\.0\.0\.1:(\d+)\b", text, flags=re.MULTILINE)
    assert [int(port) for port in servers] == list(SHIPPED_PORTS), servers
    for shipped, port in zip(SHIPPED_PORTS, upstream_ports, strict=True):
        text = re.sub(rf"\b127\.0\.0\.1:{shipped}\b", f"127.0.0.1:{port}", text)
    return text


NGINX_CONF = """\
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {directory}/access.log;
    client_body_temp_path {directory}/temp/body;
    proxy_temp_path {directory}/temp/proxy;
    fastcgi_temp_path {directory}/temp/fastcgi;
    uwsgi_temp_path {directory}/temp/uwsgi;
    scgi_temp_path {directory}/temp/scgi;
    include {directory}/voicebot.conf;
}}
"""


@contextmanager
def nginx(binary: str, directory: Path, site: str, port: int) -> Iterator[None]:
    """A private nginx (as Debian's nginx.conf would include the site) until the block ends."""
    (directory / "temp").mkdir(parents=True, exist_ok=True)
    (directory / "voicebot.conf").write_text(site)
    # Run as root, nginx's workers would drop to "nobody", who cannot read the test's files.
    user = "user root;" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(NGINX_CONF.format(user=user, directory=directory))
    command = [binary, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    check = subprocess.run(
        [*command, "-e", str(directory / "error.log"), "-t"], capture_output=True, text=True
    )
    assert check.returncode == 0, f"nginx refuses the rendered site:\n{check.stderr}"
    process = subprocess.Popen(
        [*command, "-e", str(directory / "error.log"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def self_signed_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A certificate for `host` and 127.0.0.1, its own trust anchor; (certificate, key)."""
    certificate, key = directory / "certificate.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=DNS:{host},IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        check=True,
        capture_output=True,
    )
    return certificate, key


@dataclass
class JournalEntry:
    at: float  # time.monotonic()
    event: str  # "stopped" or "started"
    port: int
    pid: int


@dataclass
class FakeSystemd:
    """voicebot@PORT instances run from the shipped unit, restarted as systemd restarts them.

    `url` takes `POST /restart/PORT` (stop, then start, as `systemctl restart`),
    `POST /stop/PORT`, and `POST /break/PORT` (restart as a process that listens but is not
    voicebot), so that deploy/rolling-restart can drive it with curl.
    """

    env: dict[str, str]
    log_directory: Path
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    journal: list[JournalEntry] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        unit = unit_settings(render_unit())
        assert unit["KillSignal"] == "SIGTERM"
        self.stop_timeout_s = float(unit["TimeoutStopSec"])
        self.working_directory = unit["WorkingDirectory"]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def command(self, port: int) -> list[str]:
        return shlex.split(unit_settings(render_unit(port=port))["ExecStart"])

    def log_path(self, port: int) -> Path:
        return self.log_directory / f"voicebot@{port}.log"

    def start(self, port: int, *, command: list[str] | None = None) -> int:
        """Start the instance (Type=simple: started once forked); its pid.

        `command` replaces the unit's ExecStart, to stand in a broken process.
        """
        with self._lock, open(self.log_path(port), "ab") as log:
            assert port not in self.processes, f"voicebot@{port} is already running"
            process = subprocess.Popen(
                command or self.command(port),
                cwd=self.working_directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.processes[port] = process
            self.journal.append(JournalEntry(time.monotonic(), "started", port, process.pid))
            return process.pid

    def stop(self, port: int) -> None:
        with self._lock:
            process = self.processes.pop(port, None)
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with self._lock:
            self.journal.append(JournalEntry(time.monotonic(), "stopped", port, process.pid))

    def restart(self, port: int) -> None:
        self.stop(port)
        self.start(port)

    def break_(self, port: int) -> None:
        """Restart the instance as a process that listens on its port but is not voicebot."""
        self.stop(port)
        impostor = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
        self.start(port, command=impostor)

    def pid(self, port: int) -> int | None:
        process = self.processes.get(port)
        return process.pid if process is not None else None

    def serve(self) -> None:
        systemd = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                match = re.fullmatch(r"/(restart|stop|break)/(\d+)", self.path)
                if not match:
                    self.send_error(404)
                    return
                action, port = match[1], int(match[2])
                {"restart": systemd.restart, "stop": systemd.stop, "break": systemd.break_}[
                    action
                ](port)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for port in list(self.processes):
            self.stop(port)
