"""The servers under test: `parley serve` or the bare relay, each a child process
pinned to its own core, on a free port, with a temp data dir."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from parley.bench.wire import BenchError


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def plan_cores() -> tuple[int | None, list[int] | None]:
    """(server core, load cores): the server gets the first core the bench may
    use and the load generator the rest; one core: nobody is pinned."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return cores[0], cores[1:]


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """A server the bench drives: `name` is `parley` or `baseline`."""

    name: str
    url: str
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    workdir: Path | None = None
    pinned: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/v1/ws"

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rsplit(":", 1)[0]

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid) if self.pid else None

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def output(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _preexec() -> None:
    raise_nofile()


def pinned(argv: list[str], core: int | None) -> list[str]:
    """`argv`, run on `core` only (unchanged when `core` is None)."""
    if core is None:
        return argv
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return [  # pragma: no cover - util-linux is nearly everywhere
        sys.executable,
        "-c",
        "import os,sys; os.sched_setaffinity(0,{int(sys.argv[1])}); "
        "os.execv(sys.argv[2], sys.argv[2:])",
        str(core),
        *argv,
    ]


def spawn(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    core: int | None,
    timeout: float,
    *,
    health: str = "/healthz",
    cwd: Path | None = None,
) -> Target:
    """Start a server pinned to `core` and wait until `GET health` answers 200."""
    argv = pinned(argv, core)
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=_preexec,
            cwd=cwd,
        )
    target = Target(
        name, f"http://127.0.0.1:{port}", proc.pid, proc, log_path, workdir, pinned=core
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = target.output()
            target.stop()
            raise BenchError(f"{name} exited early:\n{out}")
        try:
            with urllib.request.urlopen(target.url + health, timeout=1) as r:
                if r.status == 200:
                    return target
        except OSError:
            time.sleep(0.05)
    out = target.output()
    target.stop()
    raise BenchError(f"{name} not ready after {timeout}s:\n{out}")


def start_parley(core: int | None, extra: list[str], timeout: float = 30.0) -> Target:
    """`parley serve` on a free port with a temp data dir and the send limit off."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "parley.cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
        "--send-rate-limit",
        "0",
        # set-up logs in hundreds of users from one address
        "--auth-rate-limit",
        "1000000",
        *extra,
    ]
    return spawn("parley", argv, port, workdir, core, timeout)


def start_relay(core: int | None, timeout: float = 30.0) -> Target:
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-relay-"))
    port = free_port()
    argv = [sys.executable, "-m", "parley.bench.relay", "--port", str(port)]
    return spawn("baseline", argv, port, workdir, core, timeout)


def external(url: str, pid: int | None) -> Target:
    return Target("parley", url.rstrip("/"), pid=pid)
