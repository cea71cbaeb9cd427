"""`make dev`: `dg dev` (webserver, daemon, code server) that stops with every process it
started on Ctrl-C and on SIGTERM, also when it was started in the background (where a shell
leaves SIGINT ignored) and when `make` itself is the one terminated.

    python scripts/dev.py dg dev -h 127.0.0.1 -p 3000
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 20.0  # dg dev's own shutdown (it stops the webserver and the daemon) gets this long


def main(argv: list[str]) -> int:
    # the parent (make) dies -> this process gets SIGTERM, and stops dg dev like a Ctrl-C
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    proc = subprocess.Popen(argv, start_new_session=True,  # its own group: all of it, later
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stopping: list[str] = []

    def stop(signum, _frame) -> None:
        if stopping:
            return
        stopping.append(signal.Signals(signum).name)
        print(f"\ndev: {stopping[0]}: stopping the webserver, the daemon and the code server",
              file=sys.stderr, flush=True)
        _signal_group(proc.pid, signal.SIGINT)  # dg dev's own clean shutdown

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    while proc.poll() is None:
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    # what dg dev left behind in its group (a run worker, a code server): terminated, then killed
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(proc.pid, signal.SIGKILL)
    if stopping:
        print("dev: stopped", file=sys.stderr, flush=True)
        return 0
    return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
