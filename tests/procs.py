"""Helpers for tests that start real processes (servers, Prometheus): one free port, one
start-and-wait-until-ready, one stop."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from effort_server.server.bench import wait_ready

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log_path: Path, url: str, ready_path: str = "/health", timeout: float = 300):
    """Start `cmd` (output to `log_path`) and wait until GET url+ready_path is 200; on failure
    kill it and raise with the end of its log."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc, timeout, ready_path)
    except RuntimeError as e:
        proc.kill()
        raise RuntimeError(f"{e}: {Path(log_path).read_text()[-3000:]}") from None
    return proc


def stop(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
