"""Servers a test session owns: started by it as its own child processes, in directories of
its own, on ports it proves are theirs, and stopped with it. Nothing here adopts a server that
happens to answer on a port: a port is taken either by the server itself (it binds port 0 and
the port is read back from the kernel's table of the process's listening sockets) or, for a
server that needs its port written in its configuration, chosen at random and then checked to
be held by the process just started (another process holding it makes the start fail, and
another port is tried)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            out += [int(k) for k in kids]
    except OSError:
        pass
    return out


def listening_ports(pid: int, tree: bool = True) -> set[int]:
    """The TCP ports the process (and, with `tree`, its descendants) listens on, read from
    /proc: what the kernel says this process holds, not what answers on a port."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        if tree:
            todo += _children(p)
    inodes = set().union(*(_socket_inodes(p) for p in pids))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for(what: str, ready: Callable[[], object], proc: subprocess.Popen | None,
             log: Path | None, timeout: float = 120) -> object:
    """ready()'s first truthy answer; fails at once (with the log's end) when the process
    exits first, and after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = ready()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise ServerDidNotStart(f"{what} exited with {proc.returncode} while starting:\n"
                                    + _tail(log))
        if time.monotonic() > deadline:
            raise ServerDidNotStart(f"{what} did not start within {timeout:.0f}s:\n" + _tail(log))
        time.sleep(0.2)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-3000:]


class ServerDidNotStart(RuntimeError):
    pass


def candidate_ports(n: int = 1) -> list[int]:
    """n consecutive ports picked at random below Linux's ephemeral range (32768-60999), where
    an outgoing connection's local port cannot hold them; not yet bound by anyone."""
    while True:
        base = random.randrange(20000, 32000 - n)
        ports = list(range(base, base + n))
        if not (set(ports) & _bound_ports()):
            return ports


def _bound_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(table).read_text().splitlines()[1:]:
                ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


class Owned:
    """A server process this session started (in a new process group), with its directory
    and log; stop() ends the group and removes the directory."""

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.proc: subprocess.Popen | None = None
        self.log = root / f"{name}.log"

    def popen(self, cmd: Sequence[str], env: dict | None = None, user: str | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        if user is not None and os.geteuid() == 0:
            cmd = ["runuser", "-u", user, "--", *cmd]
        self.proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd,
                                     start_new_session=True)
        return self.proc

    def ports(self) -> set[int]:
        return listening_ports(self.proc.pid) if self.proc is not None else set()

    def holds(self, *ports: int) -> bool:
        return set(ports) <= self.ports()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signals the whole process group (the server's children too), waits, then kills
        what is left of the group."""
        if self.proc is None:
            return
        group = self.proc.pid  # the group's id: the leader's pid (start_new_session)
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(group, signal.SIGKILL)  # whatever of the group is still there
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.proc = None


def start_on_port(what: str, owned: Owned, nports: int,
                  launch: Callable[[list[int]], subprocess.Popen],
                  ready: Callable[[list[int]], bool], attempts: int = 5,
                  timeout: float = 120) -> list[int]:
    """Starts a server that must be told its ports: random free ones, `launch(ports)`, then
    ready(ports) and the process holding every one of them; another process taking one first
    makes it fail: stopped, and new ports tried."""
    last = None
    for _ in range(attempts):
        ports = candidate_ports(nports)
        launch(ports)
        try:
            # held by this process first: only then is anything said to the port
            wait_for(what, lambda p=ports: owned.holds(*p) and ready(p), owned.proc, owned.log,
                     timeout)
            return ports
        except ServerDidNotStart as e:
            last = e
            owned.stop(signal.SIGKILL)
        except BaseException:
            owned.stop(signal.SIGKILL)  # nothing that did not start outlives the attempt
            raise
    raise ServerDidNotStart(f"{what}: no attempt started ({attempts} tried): {last}")


def start_on_port_zero(what: str, owned: Owned, launch: Callable[[], subprocess.Popen],
                       count: int = 1, timeout: float = 120) -> list[int]:
    """Starts a server told to bind port 0: the kernel picks a free port, read back from the
    process's listening sockets (sorted; `count` of them)."""
    launch()
    try:
        return wait_for(what, lambda: (lambda p: sorted(p) if len(p) >= count else None)(
            owned.ports()), owned.proc, owned.log, timeout)
    except BaseException:
        owned.stop(signal.SIGKILL)  # nothing that did not start outlives the attempt
        raise


def session_dir(name: str) -> Path:
    """A directory for a session's server data, readable by the servers' own system users
    (pytest's temporary directories are private to this user)."""
    d = Path(tempfile.mkdtemp(prefix=f"pipeline_defs-{name}-"))
    d.chmod(0o755)
    return d


def remove(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


class RefusedPort:
    """A loopback port nothing listens on, held for as long as the block lasts: a socket bound
    to it and never listening, so connecting is refused and no other process can take it."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
