"""`make dev` stops cleanly, with every process it started (dg dev, the webserver, the daemon,
the code servers): on Ctrl-C (SIGINT to the terminal's foreground process group), and when it
was started in the background by a non-interactive shell (which leaves SIGINT ignored) and
`make` gets SIGTERM, as from a supervisor or `kill %1`."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import REPO
from pipeline_defs_tests.owned import candidate_ports, listening_ports


def _processes_with(home: Path) -> list[int]:
    """Pids of the processes whose environment has DAGSTER_HOME=home."""
    needle = f"DAGSTER_HOME={home}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def _up(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            return
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
    raise AssertionError(f"make dev did not serve: {log.read_text()[-3000:]}")


def _kill_all(home: Path) -> None:
    for pid in _processes_with(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("how", ["ctrl-c", "background-sigterm"])
def test_make_dev_stops_with_everything_it_started(tmp_path, how, request):
    home, (port,), log = tmp_path / "home", candidate_ports(1), tmp_path / "dev.log"
    # if the test fails before `make dev` stopped, nothing it started outlives the test
    request.addfinalizer(lambda: _kill_all(home))
    (tmp_path / "configs").mkdir()
    make = f"make dev DEV_PORT={port} DAGSTER_HOME={home}"
    env = {**os.environ, "PIPELINE_CONFIG_DIR": str(tmp_path / "configs")}
    env.pop("DAGSTER_HOME", None)
    if how == "ctrl-c":  # in the foreground of a terminal: its own process group
        proc = subprocess.Popen(make.split(), cwd=REPO, env=env, start_new_session=True,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)
        make_pid = proc.pid
    else:  # `make dev &` from a script: SIGINT ignored by make and what it starts
        proc = subprocess.Popen(["bash", "-c", f"{make} & echo $! > {tmp_path}/pid; wait"],
                                cwd=REPO, env=env, start_new_session=True,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)
    _up(port, proc, log)
    # what answered is the webserver this `make dev` started, not another on that port
    assert port in listening_ports(proc.pid), (port, log.read_text()[-3000:])
    started = _processes_with(home)
    assert len(started) >= 4, started  # make, dg dev, webserver, daemon, code server(s)
    sent = time.monotonic()
    if how == "ctrl-c":
        os.killpg(make_pid, signal.SIGINT)
    else:
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _processes_with(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    took = time.monotonic() - sent
    assert not _processes_with(home), (how, log.read_text()[-3000:])
    print(f"make dev, {how}: every process gone in {took:.1f}s")
    proc.wait(timeout=30)
    out = log.read_text()
    assert "dev: stopped" in out and "Dagster services shut down." in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
