"""`make serve` (python -m web_runtime.serve) stopped by a signal other than Ctrl-C stops its nginx too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from web_runtime.serve import free_port

from .conftest import REPO


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_signal_stops_nginx(web_root, signame):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    serve = subprocess.Popen([sys.executable, "-m", "web_runtime.serve", "--dist", str(web_root / "tiny"), "--port", str(port)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nginx: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (_answers(url) and (nginx := _children(serve.pid))):
            assert serve.poll() is None and time.monotonic() < deadline, f"serve did not start: {serve.stdout.read()}"
            time.sleep(0.1)
        workers = [w for master in nginx for w in _children(master)]
        assert workers, "nginx should run worker processes under its master"
        nginx += workers
        os.kill(serve.pid, getattr(signal, signame))
        serve.wait(20)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in nginx) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in nginx if _alive(p)], f"nginx still running after {signame} to serve"
        assert not _answers(url), f"{url} still answers"
        assert serve.returncode == 0, serve.stdout.read()
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in nginx:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
