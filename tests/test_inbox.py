"""The inbox watcher with real files, in both modes (OS events and polling).

Every test runs a real core (aiohttp on a socket) whose watcher watches a real folder; files are
written the way users and tools write them, and the outcome is read back from the folders and
the job store. The queue is paused so the created jobs stay pending and comparable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mobilesd_core.jobfiles import MAX_FILE_BYTES, load_job_file

from .conftest import Harness, fast_settings, start_harness, stop_harness, wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "jobs"
MODES = ["events", "polling"]
PWNED = Path("/tmp/mobilesd-inbox-pwned")  # what a constructed object would create


def inbox_settings(root: Path, mode: str, **overrides: Any) -> Any:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "inbox_settle_seconds": 0.25,
        "inbox_rescan_seconds": 30.0,  # long: the tests prove events/polling, not the rescan
        "inbox_poll_seconds": 0.1 if mode == "polling" else None,
    }
    values.update(overrides)
    return fast_settings(root, **values)


async def start_paused(settings: Any) -> Harness:
    h = await start_harness(settings)
    response = await h.api.post("/api/v1/queue/pause")
    assert response.status_code == 200, response.text
    await wait_for(lambda: h.core.inbox.watching.is_set(), what="the watcher to start")
    return h


@pytest.fixture(params=MODES)
async def inbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start_paused(inbox_settings(tmp_path, request.param))
    try:
        yield h
    finally:
        await stop_harness(h)


def jobs_of(h: Harness, name: str) -> list[dict[str, Any]]:
    jobs = [j for j in h.core.store.live_jobs() if j["source_ref"] == name]
    return sorted(jobs, key=lambda j: j["position"])


def settled(h: Harness, *names: str) -> bool:
    """Every named file has left the inbox for processed/ or failed/."""
    root = h.settings.inbox_path
    return all(not (root / n).exists() for n in names) and all(
        (root / "processed" / n).exists() or (root / "failed" / n).exists() for n in names
    )


def hostile_tag_ran() -> bool:
    """Whether the hostile tag's command ran (it would have created PWNED)."""
    return PWNED.exists()


def write_atomically(path: Path, data: bytes) -> None:
    """How a careful tool drops a file: a hidden temp name, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_each_form_creates_the_right_jobs(inbox: Harness) -> None:
    await inbox.add_sim("gpu1")  # sweep.yaml targets it
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    for name in names:
        shutil.copy(EXAMPLES / name, inbox.settings.inbox_path / name)
    await wait_for(lambda: settled(inbox, *names), what="the examples to be processed")
    for name in names:
        assert (inbox.settings.inbox_path / "processed" / name).exists()
        expected = load_job_file(EXAMPLES / name).jobs
        jobs = jobs_of(inbox, name)
        assert [j["generation_params"] for j in jobs] == [
            spec.params.model_dump(mode="json") for spec in expected
        ]
        assert [j["target_server_alias"] for j in jobs] == [spec.server for spec in expected]
        assert {j["source"] for j in jobs} == {"inbox"}
    sweep = jobs_of(inbox, "sweep.yaml")
    assert len(sweep) == 12
    assert {j["generation_params"]["prompt"] for j in sweep} == {
        "portrait of an old sailor, charcoal sketch",
        "portrait of an old sailor, oil painting",
    }
    assert not (inbox.settings.inbox_path / "failed").exists() or not any(
        (inbox.settings.inbox_path / "failed").iterdir()
    )


def _alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    lines.append("prompt: *i")
    return "\n".join(lines) + "\n"


BAD_FILES: dict[str, tuple[bytes, list[str]]] = {
    "typo.yaml": (
        b'prompt: "a fox"\nstesp: 30\nwidth: 513\n',
        [
            "typo.yaml:2: stesp: unknown field; did you mean 'steps'?",
            "typo.yaml:3: width: must be a multiple of 8",
        ],
    ),
    "missing_prompt.yaml": (b"promt: a fox\n", ["did you mean 'prompt'?", "prompt: is required"]),
    "not_yaml.yaml": (b'prompt: "a fox\nsteps: [1, 2\n', ["not valid YAML"]),
    "not_utf8.yaml": (b"prompt: caf\xe9 au lait\n", ["not UTF-8 text"]),
    "empty.yaml": (b"   \n# nothing here\n", ["file is empty"]),
    "too_big.yaml": (
        b"prompt: '" + b"x" * (MAX_FILE_BYTES + 10) + b"'\n",
        [f"at most {MAX_FILE_BYTES:,}"],
    ),
    "too_many.yaml": (
        b"prompt: a {n}\nmatrix:\n  seed: [" + b",".join(b"%d" % i for i in range(40)) + b"]\n"
        b"  n: [" + b",".join(b"%d" % i for i in range(30)) + b"]\n",
        ["makes 1200 jobs; at most 1000"],
    ),
    "bomb.yaml": (_alias_bomb().encode(), ["too complex"]),
    "python_tag.yaml": (
        f"prompt: !!python/object/apply:os.system ['touch {PWNED}']\n".encode(),
        ["YAML tag !!python/object/apply:os.system is not allowed"],
    ),
    "no_server.yaml": (
        b"defaults: {steps: 5}\njobs:\n  - prompt: a\n  - prompt: b\n    server: nowhere\n",
        ["no_server.yaml:5: jobs[1].server: no server named 'nowhere'"],
    ),
}


async def test_every_bad_input_lands_in_failed_with_its_report(inbox: Harness) -> None:
    root = inbox.settings.inbox_path
    for name, (data, _) in BAD_FILES.items():
        write_atomically(root / name, data)
    await wait_for(lambda: settled(inbox, *BAD_FILES), timeout=30, what="the bad files to fail")
    for name, (_, expected) in BAD_FILES.items():
        assert (root / "failed" / name).exists(), name
        report = (root / "failed" / f"{name}.error.txt").read_text()
        assert report.startswith(f"{name} was not queued"), report
        for phrase in expected:
            assert phrase in report, (name, phrase, report)
        assert "No job was created" in report
        assert jobs_of(inbox, name) == []
    assert inbox.core.store.live_jobs() == []
    assert not hostile_tag_ran()
    # Nothing left behind: only the moved files and their reports.
    assert sorted(p.name for p in (root / "failed").iterdir()) == sorted(
        [*BAD_FILES, *(f"{n}.error.txt" for n in BAD_FILES)]
    )


async def test_a_file_written_slowly_is_read_once_complete(inbox: Harness) -> None:
    root = inbox.settings.inbox_path
    # Every prefix that ends on a line is valid YAML with other values: reading early would
    # queue the wrong job (or fail a good file).
    text = (
        b'prompt: "a lighthouse at dusk, oil painting, dramatic sky"\n'
        b"steps: 28\n"
        b"width: 832\n"
        b"height: 1216\n"
        b"seed: 123456789\n"
        b"n_iter: 3\n"
    )
    chunks = [text[i : i + 8] for i in range(0, len(text), 8)]
    path = root / "slow.yaml"
    with path.open("wb") as fh:
        for chunk in chunks:  # ~2 s in all, a pause shorter than the quiet window each time
            fh.write(chunk)
            fh.flush()
            await asyncio.sleep(0.15)
    await wait_for(lambda: settled(inbox, "slow.yaml"), what="slow.yaml to be processed")
    jobs = jobs_of(inbox, "slow.yaml")
    assert len(jobs) == 1
    params = jobs[0]["generation_params"]
    assert (params["prompt"], params["steps"], params["seed"], params["n_iter"]) == (
        "a lighthouse at dusk, oil painting, dramatic sky",
        28,
        123456789,
        3,
    )
    assert (root / "processed" / "slow.yaml").read_bytes() == text
    assert not (root / "failed").exists() or not any((root / "failed").iterdir())


async def test_500_files_dropped_at_once_give_exactly_500_jobs(inbox: Harness) -> None:
    root = inbox.settings.inbox_path
    names = [f"job-{i:03d}.yaml" for i in range(500)]
    for i, name in enumerate(names):
        (root / name).write_text(f'prompt: "drop {i}"\nseed: {i}\n')
    await wait_for(lambda: settled(inbox, *names), timeout=90, what="500 files to be processed")
    jobs = inbox.core.store.live_jobs()
    assert len(jobs) == 500
    assert sorted(j["generation_params"]["seed"] for j in jobs) == list(range(500))
    assert {j["source_ref"] for j in jobs} == set(names)
    assert len(list((root / "processed").iterdir())) == 500


async def test_hidden_temporary_and_other_files_are_left_alone(
    inbox: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mobilesd_core.inbox")
    root = inbox.settings.inbox_path
    leave = [
        "._job.yaml",
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "~$job.yaml",
        "job.yaml.part",
        "job.yaml.partial",
        "job.yaml.abc123.partial",
        "job.yaml.tmp",
        ".syncthing.job.yaml.tmp",
        "~syncthing~job.yaml.tmp",
        "job.yaml.filepart",
        "job.yaml.crdownload",
        ".~lock.job.yaml#",
        "notes.txt",
    ]
    for name in leave:
        (root / name).write_text("prompt: should not run\n")
    for folder in (".stfolder", "@eaDir", "__MACOSX", ".stversions"):
        (root / folder).mkdir()
        (root / folder / "inside.yaml").write_text("prompt: should not run\n")
    (root / "sub").mkdir()
    (root / "sub" / "nested.yml").write_text("prompt: from a subfolder\n")
    await wait_for(lambda: settled(inbox, "sub/nested.yml"), what="the nested job file")
    # The rename of a finished download into place is what counts.
    os.replace(root / "job.yaml.part", root / "job.yaml")
    await wait_for(lambda: settled(inbox, "job.yaml"), what="the renamed download")
    assert [j["generation_params"]["prompt"] for j in inbox.core.store.live_jobs()] == [
        "from a subfolder",
        "should not run",  # job.yaml, once complete under its real name
    ]
    for name in leave:
        if name != "job.yaml.part":
            assert (root / name).exists(), name
    told = [r.getMessage() for r in caplog.records if "notes.txt" in r.getMessage()]
    assert told == ["inbox: notes.txt is not a job file (.yaml or .yml); left where it is"]


async def test_files_present_before_start_are_ingested(tmp_path: Path) -> None:
    settings = inbox_settings(tmp_path, "events")
    for name in ("single.yaml", "batch.yaml"):
        shutil.copy(EXAMPLES / name, settings.inbox_path / name)
    h = await start_paused(settings)
    try:
        await wait_for(lambda: settled(h, "single.yaml", "batch.yaml"), what="ingest at start")
        assert len(jobs_of(h, "single.yaml")) == 1
        assert len(jobs_of(h, "batch.yaml")) == 3
    finally:
        await stop_harness(h)


async def test_the_same_file_dropped_again_is_queued_again(
    inbox: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mobilesd_core.inbox")
    root = inbox.settings.inbox_path
    shutil.copy(EXAMPLES / "single.yaml", root / "again.yaml")
    await wait_for(lambda: settled(inbox, "again.yaml"), what="the first drop")
    shutil.copy(EXAMPLES / "single.yaml", root / "again.yaml")
    await wait_for(
        lambda: len(jobs_of(inbox, "again.yaml")) == 2 and not (root / "again.yaml").exists(),
        what="the second drop",
    )
    moved = {p.name for p in (root / "processed").iterdir()}
    assert "again.yaml" in moved and len(moved) == 2
    (second,) = moved - {"again.yaml"}
    assert second.startswith("again.2") and second.endswith(".yaml")  # a timestamp, no overwrite
    assert any("queuing it again as asked" in r.getMessage() for r in caplog.records)


async def test_a_failed_store_write_is_retried_with_the_same_job_ids(
    inbox: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intent is noted, the store write fails: the retry creates the jobs once, with the
    ids noted before (so a crash at that point could not double them either)."""
    service = inbox.core.service
    real = service.submit_prepared
    calls: list[list[str]] = []

    async def flaky(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append([j["mobilesd_job_id"] for j in jobs])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return await real(jobs)

    monkeypatch.setattr(service, "submit_prepared", flaky)
    shutil.copy(EXAMPLES / "batch.yaml", inbox.settings.inbox_path / "batch.yaml")
    await wait_for(lambda: settled(inbox, "batch.yaml"), what="batch.yaml after the retry")
    assert len(calls) == 2 and calls[0] == calls[1]
    assert [j["mobilesd_job_id"] for j in jobs_of(inbox, "batch.yaml")] == calls[0]


async def test_the_inbox_vanishing_pauses_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mobilesd_core.inbox")
    settings = inbox_settings(tmp_path, "polling", inbox_rescan_seconds=0.3)
    h = await start_paused(settings)
    root = settings.inbox_path
    try:
        shutil.rmtree(root)

        def missing() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "is missing" in r.getMessage()]

        # Until the watcher has looked and found the folder gone, a quick comeback would go
        # unnoticed (nothing to say then): wait for it to say so.
        await wait_for(missing, what="the watcher to notice the folder is gone")
        assert not h.core.inbox.watching.is_set()
        assert not root.exists()  # never created in place of a missing share
        root.mkdir()
        (root / "back.yaml").write_text("prompt: after the share came back\n")
        await wait_for(lambda: settled(h, "back.yaml"), what="the file after the comeback")
        assert len(jobs_of(h, "back.yaml")) == 1
        assert len(missing()) == 1 and missing()[0].levelname == "WARNING"  # said once
    finally:
        await stop_harness(h)


async def test_files_that_cannot_be_moved_are_queued_once_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """processed/ and failed/ cannot be made (files hold their names; in Docker: an inbox the
    container's user may not write): the good file's jobs are queued once, each file is
    reported once however often the move is retried, and nothing speaks of a restart."""
    caplog.set_level(logging.INFO, logger="mobilesd_core.inbox")
    settings = inbox_settings(tmp_path, "polling", inbox_settle_seconds=0.05)
    root = settings.inbox_path
    for blocker in ("processed", "failed"):
        (root / blocker).write_text("in the way\n")
    h = await start_paused(settings)
    try:
        (root / "good.yaml").write_text("defaults: {steps: 2}\njobs: [{prompt: a}, {prompt: b}]\n")
        (root / "bad.yaml").write_text("prompt: typo\nstesp: 2\n")
        held = h.core.inbox._held
        await wait_for(
            lambda: held.get("good.yaml", 0) >= 4 and held.get("bad.yaml", 0) >= 4,
            what="several tries to move both files",
        )
        assert len(jobs_of(h, "good.yaml")) == 2
        messages = [r.getMessage() for r in caplog.records]
        about_good = [m for m in messages if "good.yaml" in m]
        assert len(about_good) == 1, about_good
        assert "2 job(s) queued, but the file cannot be moved to processed/" in about_good[0]
        assert "its jobs are not queued again" in about_good[0]
        about_bad = [m for m in messages if "bad.yaml" in m]
        assert len(about_bad) == 1, about_bad
        assert "stesp: unknown field" in about_bad[0] and "stays in the inbox" in about_bad[0]
        assert not [m for m in messages if "restart" in m]

        for blocker in ("processed", "failed"):
            (root / blocker).unlink()
        await wait_for(lambda: settled(h, "good.yaml", "bad.yaml"), what="the moves")
        assert len(jobs_of(h, "good.yaml")) == 2
        assert (root / "failed" / "bad.yaml.error.txt").exists()
        assert any(
            "good.yaml moved to processed/good.yaml (its jobs were queued before)" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await stop_harness(h)
