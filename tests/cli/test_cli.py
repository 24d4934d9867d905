"""The `parley` command line against a real server: two profiles chatting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ServerProcess

PARLEY = [sys.executable, "-m", "parley.cli.main"]
PASSWORD = "correct horse battery"


def _env(server: ServerProcess, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PARLEY_HOME=str(home), PARLEY_SERVER=server.url, PYTHONUNBUFFERED="1")
    return env


async def parley(
    env: dict[str, str], *args: str, stdin: bytes = b"", **extra: str
) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        *PARLEY,
        *args,
        env={**env, **extra},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """A clean failure: exit 1 with one `error:` line, never a traceback."""
    assert result.returncode == 1, f"{result.args}: {result.stdout} {result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    return result.stderr


async def _readline(stream: asyncio.StreamReader, within: float = 20.0) -> str:
    line = await asyncio.wait_for(stream.readline(), within)
    assert line, "listen ended early"
    return line.decode().rstrip("\n")


async def _next_message(stream: asyncio.StreamReader) -> str:
    """The next `[conversation] sender: text` line, past receipts and notices."""
    while True:
        line = await _readline(stream)
        if "] (" not in line and not line.startswith("* "):
            return line


async def test_two_profiles_chat(tmp_path: Path, shared_server: ServerProcess) -> None:
    env = _env(shared_server, tmp_path / "home")
    suffix = os.urandom(3).hex()
    alice, bob = f"alice{suffix}", f"bob{suffix}"

    out = ok(await parley(env, "register", alice, "--password", PASSWORD, "--display-name", "A"))
    assert out.startswith(f"registered {alice} (")
    ok(await parley(env, "register", bob, PARLEY_PASSWORD=PASSWORD))
    taken = await parley(env, "register", alice, "--password", PASSWORD)
    assert "(username_taken)" in failed(taken)
    short = await parley(env, "register", "carol" + suffix, "--password", "short")
    assert "(validation_error)" in failed(short)

    # Global options before or after the subcommand; password by flag, env or prompt.
    failed(await parley(env, "--profile", "alice", "login", alice, "--password", "wrong pass!"))
    ok(await parley(env, "--profile", "alice", "login", alice, PARLEY_PASSWORD=PASSWORD))
    ok(await parley(env, "login", bob, "--profile", "bob", stdin=PASSWORD.encode() + b"\n"))
    assert (tmp_path / "home" / "alice.json").stat().st_mode & 0o077 == 0
    assert ok(await parley(env, "whoami", PARLEY_PROFILE="bob")).startswith(bob + " ")
    assert "not logged in" in failed(await parley(env, "--profile", "nobody", "send", bob, "x"))

    listen = await asyncio.create_subprocess_exec(
        *PARLEY,
        "--profile",
        "bob",
        "listen",
        "--count",
        "2",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert listen.stderr is not None and listen.stdout is not None
        assert (await _readline(listen.stderr)).startswith(f"listening as {bob}")

        assert ok(await parley(env, "--profile", "alice", "send", bob, "hello bob")).strip() == "1"
        assert await _next_message(listen.stdout) == f"[{alice}] {alice}: hello bob"
        assert ok(await parley(env, "--profile", "bob", "send", alice, "hi alice")).strip() == "2"
        assert await _next_message(listen.stdout) == f"[{alice}] {bob}: hi alice"
        assert await asyncio.wait_for(listen.wait(), 20) == 0
    finally:
        if listen.returncode is None:
            listen.kill()
            await listen.wait()

    history = ok(await parley(env, "--profile", "alice", "history", bob))
    assert history.splitlines() == [f"#1 {alice}: hello bob", f"#2 {bob}: hi alice"]
    latest = ok(await parley(env, "--profile", "bob", "history", alice, "--limit", "1"))
    assert latest.splitlines() == [f"#2 {bob}: hi alice"]

    assert failed(await parley(env, "--profile", "alice", "send", "nobody" + suffix, "hi"))
    ok(await parley(env, "--profile", "alice", "logout"))
    failed(await parley(env, "--profile", "alice", "history", bob))


async def test_unreachable_server_is_a_clean_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_HOME"] = str(tmp_path)
    result = await parley(
        env, "--server", "http://127.0.0.1:9", "register", "someone", "--password", PASSWORD
    )
    assert "cannot reach the server" in failed(result)


async def test_listen_survives_a_server_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    listen: asyncio.subprocess.Process | None = None
    try:
        env = _env(server, tmp_path / "home")
        for name in ("ann", "ben"):
            ok(await parley(env, "register", name, "--password", PASSWORD))
            ok(await parley(env, "--profile", name, "login", name, "--password", PASSWORD))
        listen = await asyncio.create_subprocess_exec(
            *PARLEY,
            "--profile",
            "ben",
            "listen",
            "--count",
            "2",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert listen.stderr is not None and listen.stdout is not None
        assert (await _readline(listen.stderr)).startswith("listening as ben")
        assert ok(await parley(env, "--profile", "ann", "send", "ben", "one")).strip() == "1"
        assert await _next_message(listen.stdout) == "[ann] ann: one"

        server.kill()
        assert (await _readline(listen.stderr)).startswith("connection lost")
        await asyncio.to_thread(server.start)
        # Whether the listener is back yet or not, it gets this (live or replayed).
        assert ok(await parley(env, "--profile", "ann", "send", "ben", "two")).strip() == "2"
        assert await _next_message(listen.stdout) == "[ann] ann: two"
        assert await asyncio.wait_for(listen.wait(), 20) == 0
    finally:
        if listen is not None and listen.returncode is None:
            listen.kill()
            await listen.wait()
        server.stop()
