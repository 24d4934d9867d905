"""`parley contacts`, `presence`, `group` and presence lines in `listen`, against a real
server with short presence timings. Every wait is on a line or a condition."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from parley.client import ParleyClient
from tests.cli.test_cli import PARLEY, PASSWORD, _env, failed, ok, parley
from tests.harness import ServerProcess


@pytest.fixture(scope="module")
def presence_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        Path(tmp_path_factory.mktemp("cli-presence")) / "data",
        "--presence-online-delay",
        "0.3",
        "--presence-offline-grace",
        "0.6",
    ).start()
    yield srv
    srv.stop()


async def users(env: dict[str, str], *names: str) -> None:
    """Register each name and log it in under a profile of the same name."""
    for name in names:
        ok(await parley(env, "register", name, "--password", PASSWORD))
        ok(await parley(env, "--profile", name, "login", name, "--password", PASSWORD))


@asynccontextmanager
async def listening(
    env: dict[str, str], profile: str, *extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A `parley listen` for `profile`, started once it says it is listening."""
    proc = await asyncio.create_subprocess_exec(
        *PARLEY,
        "--profile",
        profile,
        "listen",
        *extra,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert line.decode().startswith("listening as "), line
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def line_where(
    proc: asyncio.subprocess.Process, predicate: Callable[[str], bool], within: float = 20.0
) -> str:
    """The next stdout line that satisfies `predicate` (others are skipped)."""
    assert proc.stdout is not None
    seen: list[str] = []

    async def scan() -> str:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            assert raw, f"listen ended early; lines: {seen}"
            line = raw.decode().rstrip("\n")
            if predicate(line):
                return line
            seen.append(line)

    try:
        return await asyncio.wait_for(scan(), within)
    except TimeoutError:
        raise AssertionError(f"no matching line in {within}s; lines: {seen}") from None


def rows(output: str) -> dict[str, str]:
    """`name  text` table lines as {name: text}."""
    return {
        name: text
        for name, text in (re.split(r"\s{2,}", ln, maxsplit=1) for ln in output.splitlines())
    }


async def test_contacts_presence_and_listen_lines(
    tmp_path: Path, presence_server: ServerProcess
) -> None:
    env = _env(presence_server, tmp_path / "home")
    suffix = os.urandom(3).hex()
    ann, ben, cal = f"ann{suffix}", f"ben{suffix}", f"cal{suffix}"
    await users(env, ann, ben, cal)

    assert ok(await parley(env, "--profile", ann, "contacts")) == ""
    assert ok(await parley(env, "--profile", ann, "contacts", "add", ben)) == (
        f"added {ben} to contacts\n"
    )
    ok(await parley(env, "contacts", "add", cal, "--profile", ann))
    ok(await parley(env, "--profile", ben, "contacts", "add", ann))
    assert "no user named" in failed(await parley(env, "--profile", ann, "contacts", "add", "x_y"))
    # Ben lists ann back, so ann may see him; cal did not, and shares nothing with her.
    assert rows(ok(await parley(env, "--profile", ann, "contacts"))) == {
        ben: "offline",
        cal: "unknown",
    }

    async with listening(env, ann, "--typing") as ann_listen:
        async with listening(env, ben) as ben_listen:
            assert await line_where(ann_listen, lambda ln: ln.startswith("* ")) == (
                f"* {ben} is online"
            )
            assert rows(ok(await parley(env, "--profile", ann, "contacts")))[ben] == "online"
            out = ok(await parley(env, "--profile", ann, "presence", ben, cal, ben))
            assert rows(out) == {ben: "online", cal: "unknown"}
            assert len(out.splitlines()) == 2

            # Online peer: no notice.
            sent = await parley(env, "--profile", ann, "send", ben, "hi ben")
            assert (ok(sent), sent.stderr) == ("1\n", "")
            await line_where(ben_listen, lambda ln: ln == f"[{ann}] {ann}: hi ben")

            # Typing (no CLI command for it: an SDK client on ben's session types).
            async with ParleyClient(presence_server.url) as ben_sdk:
                await ben_sdk.login(ben, PASSWORD)
                await ben_sdk.connect()
                conv = await ben_sdk.create_direct((await ben_sdk.find_user(ann)).user_id)
                ben_sdk.typing(conv.conversation_id)
                typing = await line_where(ann_listen, lambda ln: "typing" in ln)
                assert typing == f"[{ben}] ({ben} is typing)"
        # Ben's every device is gone: after the grace period, ann hears of it.
        assert await line_where(ann_listen, lambda ln: ln.startswith("* ")) == (
            f"* {ben} went offline"
        )

    assert rows(ok(await parley(env, "--profile", ann, "contacts")))[ben] == (
        "offline, last seen just now"
    )
    sent = await parley(env, "--profile", ann, "send", ben, "are you there?")
    assert ok(sent) == "2\n"
    assert sent.stderr == f"({ben} is offline; will be delivered when they reconnect)\n"

    ok(await parley(env, "--profile", ann, "contacts", "remove", cal))
    assert list(rows(ok(await parley(env, "--profile", ann, "contacts")))) == [ben]
    assert "no user named" in failed(await parley(env, "--profile", ann, "presence", "x_y"))


async def test_groups_from_the_command_line(tmp_path: Path, presence_server: ServerProcess) -> None:
    env = _env(presence_server, tmp_path / "home")
    suffix = os.urandom(3).hex()
    ann, ben, cal = f"ann{suffix}", f"ben{suffix}", f"cal{suffix}"
    title = f"Trip {suffix}"
    await users(env, ann, ben, cal)

    gid = ok(await parley(env, "--profile", ann, "group", "create", title, ben)).strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", gid), gid
    listed = ok(await parley(env, "--profile", ben, "group", "list"))
    assert listed == f"{gid}  {title}  (2 members)\n"

    async with listening(env, cal) as cal_listen:
        # Added by title; cal's listen hears of the group, then of its messages.
        assert ok(await parley(env, "--profile", ann, "group", "add", title, cal)) == (
            f"added {cal} to {title}\n"
        )
        await line_where(
            cal_listen,
            lambda ln: (
                ln == f"[{title}] (conversation updated)" or ln == f"[{title}] (new conversation)"
            ),
        )
        assert ok(await parley(env, "--profile", ann, "send", "--group", title, "hello all")) == (
            "1\n"
        )
        assert ok(await parley(env, "--profile", ben, "send", "--group", gid, "hi")) == "2\n"
        assert ok(await parley(env, "--profile", cal, "send", "--group", title.upper(), "yo")) == (
            "3\n"
        )
        assert await line_where(cal_listen, lambda ln: ln.endswith(": hi")) == (
            f"[{title}] {ben}: hi"
        )

    history = ok(await parley(env, "--profile", cal, "history", "--group", title))
    assert history.splitlines() == [f"#1 {ann}: hello all", f"#2 {ben}: hi", f"#3 {cal}: yo"]
    latest = ok(await parley(env, "--profile", ben, "history", "--group", gid, "--limit", "1"))
    assert latest.splitlines() == [f"#3 {cal}: yo"]
    members = rows(ok(await parley(env, "--profile", ann, "group", "members", title)))
    assert members[ann] == "admin   (you)"
    assert members[ben].startswith("member  ") and members[cal].startswith("member  ")

    # Only the admin changes the group.
    assert "(forbidden)" in failed(await parley(env, "--profile", ben, "group", "remove", gid, cal))
    assert "(forbidden)" in failed(
        await parley(env, "--profile", ben, "group", "rename", gid, "Mine")
    )
    renamed = f"Renamed {suffix}"
    assert ok(await parley(env, "--profile", ann, "group", "rename", title, renamed)) == (
        f"renamed {title} to {renamed}\n"
    )
    assert "no group" in failed(await parley(env, "--profile", ann, "history", "--group", title))

    # A removed member reads up to the removal (by id) and can send no more.
    async with listening(env, cal) as cal_listen:
        ok(await parley(env, "--profile", ann, "group", "remove", renamed, cal))
        told = await line_where(cal_listen, lambda ln: ln.startswith(f"[{renamed}] ("))
        assert told == f"[{renamed}] (you are no longer a member)"
    ok(await parley(env, "--profile", ann, "send", "--group", gid, "after cal"))
    assert ok(await parley(env, "--profile", cal, "history", "--group", gid)).splitlines() == (
        history.splitlines()
    )
    assert "(not_found)" in failed(await parley(env, "--profile", cal, "send", "--group", gid, "x"))
    assert ok(await parley(env, "--profile", cal, "group", "list")) == (
        f"{gid}  {renamed}  (no longer a member)\n"
    )

    # Leaving; two groups with one title must be named by id.
    assert ok(await parley(env, "--profile", ben, "group", "leave", renamed)) == (
        f"left {renamed}\n"
    )
    assert list(rows(ok(await parley(env, "--profile", ann, "group", "members", gid)))) == [ann]
    other = ok(await parley(env, "--profile", ann, "group", "create", renamed)).strip()
    ambiguous = failed(await parley(env, "--profile", ann, "send", "--group", renamed, "?"))
    assert "2 groups are titled" in ambiguous and gid in ambiguous and other in ambiguous
    assert ok(await parley(env, "--profile", ann, "send", "--group", other, "mine")) == "1\n"

    # Usage mistakes and directs are clean errors.
    assert "usage:" in failed(await parley(env, "--profile", ann, "send", "--group", gid))
    assert "usage:" in failed(await parley(env, "--profile", ann, "history"))
    ok(await parley(env, "--profile", ann, "send", ben, "direct"))
    direct = ok(await parley(env, "--profile", ann, "history", ben)).splitlines()
    assert direct == [f"#1 {ann}: direct"]
