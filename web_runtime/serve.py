"""Serve a bundle folder with Debian's nginx on 127.0.0.1, with the CDN headers of `nginx.conf.snippet`.

    python -m web_runtime.serve --dist dist [--port 8080]

Used by `make serve` (foreground) and by the browser tests (`NginxServer` as a context manager).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from web_runtime.build_bundle import nginx_locations, nginx_types


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_config(root: Path, port: int, prefix: Path, ort_dir: str, access_log: bool = True) -> str:
    temp = "".join(f"    {d}_temp_path {prefix}/{d}_temp;\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, workers would otherwise drop to nobody
    server = nginx_locations(ort_dir).replace("\n", "\n        ").rstrip()
    types = nginx_types().replace("\n", "\n    ").rstrip()
    log = f"access_log {prefix}/access.log;" if access_log else "access_log off;"
    return f"""{user}daemon off;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    {types}
{temp}    {log}
    sendfile on;
    etag on;
    gzip on;
    gzip_types text/javascript application/json application/wasm text/css text/plain;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {server}
    }}
}}
"""


class NginxServer:
    """nginx serving `root` on a free localhost port, with its own prefix in a temp folder."""

    def __init__(self, root: Path, port: int | None = None, ort_dir: str | None = None):
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.ort_dir = ort_dir or _guess_ort_dir(self.root)
        self.prefix = Path(tempfile.mkdtemp(prefix="clearcut-nginx-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "NginxServer":
        binary = find_nginx()
        if binary is None:
            raise FileNotFoundError("nginx not found: run `make setup-system` (installs nginx-light)")
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / f"{d}_temp").mkdir(exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(nginx_config(self.root, self.port, self.prefix, self.ort_dir))
        self.process = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() + (self.prefix / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {err}")
            try:
                urllib.request.urlopen(self.url + "/", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # it answers (e.g. 403/404 on an empty root)
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer on {self.url} within 10 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _guess_ort_dir(root: Path) -> str:
    found = sorted(p.name for p in root.rglob("ort-*") if p.is_dir())
    return found[0] if found else "ort"


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached `make serve`."""


def _raise_stopped(signum: int, _frame) -> None:
    raise _Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="web_runtime.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if not (Path(args.dist) / "manifest.json").exists():
        print(f"error: {args.dist}/manifest.json missing: run `make bundle` first")
        return 1
    # nginx runs as our child: without these handlers a SIGTERM (kill, systemd, a process manager) or SIGHUP
    # (closed terminal) would end Python without `finally` and leave nginx serving. Installed before nginx
    # starts, so a signal during startup stops it too.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stopped)
    server = NginxServer(Path(args.dist), args.port)
    try:
        server.start()
        print(f"ClearCut demo on {server.url}/  (Ctrl-C to stop)", flush=True)
        server.process.wait()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
