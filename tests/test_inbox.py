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

from mobilesd_core.inbox.ingest import Outcome
from mobilesd_core.jobfiles import MAX_FILE_BYTES, load_job_file

from .conftest import Harness, stop_harness, wait_for
from .helpers.inbox import inbox_settings, jobs_of, settled, start_paused

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "jobs"
MODES = ["events", "polling"]
PWNED = Path("/tmp/mobilesd-inbox-pwned")  # what a constructed object would create


@pytest.fixture(params=MODES)
async def inbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start_paused(inbox_settings(tmp_path, request.param))
    try:
        yield h
    finally:
        await stop_harness(h)


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
    # The init images the img2img examples name, beside them (copied into the upload store).
    shutil.copytree(EXAMPLES / "images", inbox.settings.inbox_path / "images")
    for name in names:
        shutil.copy(EXAMPLES / name, inbox.settings.inbox_path / name)
    await wait_for(lambda: settled(inbox, *names), what="the examples to be processed")
    for name in names:
        assert (inbox.settings.inbox_path / "processed" / name).exists()
        expected = load_job_file(EXAMPLES / name).jobs
        jobs = jobs_of(inbox, name)
        assert [_without_hashes(j["generation_params"]) for j in jobs] == [
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


def _without_hashes(params: dict[str, Any]) -> dict[str, Any]:
    """A job's parameters as its file gave them: without the stored images' hashes, which the
    core adds when it queues the job."""
    out = dict(params)
    for block in ("init", "upscale"):
        if isinstance(out.get(block), dict):
            out[block] = {k: None if k.endswith("_sha256") else v for k, v in out[block].items()}
    return out


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

    async def flaky(jobs: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
        calls.append([j["mobilesd_job_id"] for j in jobs])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return await real(jobs, **where)

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


@pytest.mark.parametrize("mode", MODES)
async def test_symlinks_under_the_inbox_are_never_followed(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A link to a folder outside (at the top and deeper down) and a link to a file: their job
    files are never read nor moved, even when edited in place after the start, and each link
    is logged once. (Polling used to walk into a linked folder, queue the edited file and move
    it to processed/link/.)"""
    caplog.set_level(logging.INFO, logger="mobilesd_core.inbox")
    # A quiet window of 1 s: the empty sentinel below waits 5 of them before it is judged.
    settings = inbox_settings(tmp_path, mode, inbox_settle_seconds=1.0)
    root = settings.inbox_path
    outside = tmp_path / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    outside_files = {
        outside / "job.yaml": b"prompt: from outside the inbox\n",
        outside / "deep" / "deeper.yml": b"prompt: deeper outside\n",
    }
    for path, data in outside_files.items():
        path.write_bytes(data)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "sub").mkdir()
    (root / "sub" / "inner").symlink_to(outside, target_is_directory=True)
    (root / "file.yaml").symlink_to(outside / "job.yaml")
    # All in place before the start: no folder event (which makes the watcher rescan and forget
    # what it was waiting for) comes between the edits below and the sentinel.
    (root / "sentinel.yaml").write_bytes(b"")
    h = await start_paused(settings)
    try:
        # Edited in place, through the link and directly: still not the inbox's.
        with (root / "link" / "job.yaml").open("r+b") as fh:
            fh.write(b"prompt: edited in place!\n")
            fh.truncate()
        with (outside / "deep" / "deeper.yml").open("ab") as fh:
            fh.write(b"steps: 9\n")
        outside_files[outside / "job.yaml"] = b"prompt: edited in place!\n"
        outside_files[outside / "deep" / "deeper.yml"] += b"steps: 9\n"
        # Filled in place after the edits: the same watcher sees it after them and handles it
        # one quiet window later, so what the edits could cause has happened once it is queued.
        with (root / "sentinel.yaml").open("r+b") as fh:
            fh.write(b"prompt: written after the edits\n")
        await wait_for(lambda: settled(h, "sentinel.yaml"), what="the sentinel file")
        await h.core.inbox.rescan_now()

        assert [j["source_ref"] for j in h.core.store.live_jobs()] == ["sentinel.yaml"]
        for path, data in outside_files.items():
            assert path.read_bytes() == data, path
        assert [p.name for p in (root / "processed").iterdir()] == ["sentinel.yaml"]
        assert not (root / "failed").exists()
        assert (root / "link").is_symlink() and (root / "sub" / "inner").is_symlink()
        assert (root / "file.yaml").is_symlink()
        told = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
        assert sorted(told) == [
            f"inbox: {name} is a symbolic link; not followed, left where it is"
            for name in ("file.yaml", "link", "sub/inner")
        ]
    finally:
        await stop_harness(h)


async def test_a_folder_swapped_for_a_link_after_the_check_is_not_read(
    inbox: Harness, tmp_path: Path
) -> None:
    """The ingestor itself refuses a path through a link: the watcher's check and the read are
    two moments, and a folder can become a link in between."""
    root = inbox.settings.inbox_path
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "job.yaml").write_text("prompt: from outside the inbox\n")
    (root / "link").symlink_to(outside, target_is_directory=True)
    outcome = await inbox.core.inbox.ingestor.ingest("link/job.yaml", confirmed=True)
    assert outcome is Outcome.GONE
    assert (outside / "job.yaml").read_text() == "prompt: from outside the inbox\n"
    assert not (root / "processed").exists() and not (root / "failed").exists()
    assert inbox.core.store.live_jobs() == []


async def test_processed_or_failed_linked_out_of_the_inbox_receives_nothing(
    inbox: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A `processed/` or `failed/` that is a link to a folder outside: nothing is moved or
    written through it; the file stays where it is, with a warning (and its jobs made once)."""
    caplog.set_level(logging.INFO, logger="mobilesd_core.inbox")
    root = inbox.settings.inbox_path
    outside = {name: tmp_path / f"outside-{name}" for name in ("processed", "failed")}
    for name, folder in outside.items():
        folder.mkdir()
        (root / name).symlink_to(folder, target_is_directory=True)
    write_atomically(root / "good.yaml", b"prompt: a fox\n")
    write_atomically(root / "bad.yaml", b"stesp: 3\n")

    def warned(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    await wait_for(
        lambda: (
            warned("good.yaml -> 1 job(s) queued, but the file cannot be moved to processed/")
            and warned("it cannot be moved to failed/ with its report")
        ),
        what="both moves to be refused",
    )
    assert [list(folder.iterdir()) for folder in outside.values()] == [[], []]
    assert (root / "good.yaml").exists() and (root / "bad.yaml").exists()
    assert [j["source_ref"] for j in inbox.core.store.live_jobs()] == ["good.yaml"]


@pytest.mark.parametrize("error", [MemoryError, RuntimeError, KeyError])
async def test_a_file_that_raises_goes_to_failed_and_the_next_is_queued(
    inbox: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: type[Exception],
) -> None:
    """Whatever judging one file raises (a MemoryError killed the watcher for good), that file
    lands in failed/ with a report and the files after it are queued."""
    from mobilesd_core.inbox import ingest

    real = ingest.parse_job_text

    def parse(data: bytes, *, name: str, **kwargs: Any) -> Any:
        if name == "boom.yaml":
            raise error("injected")
        return real(data, name=name, **kwargs)

    monkeypatch.setattr(ingest, "parse_job_text", parse)
    root = inbox.settings.inbox_path
    write_atomically(root / "boom.yaml", b"prompt: this one raises\n")
    await wait_for(lambda: settled(inbox, "boom.yaml"), what="boom.yaml to be dealt with")
    write_atomically(root / "next.yaml", b"prompt: the file after it\n")
    await wait_for(lambda: settled(inbox, "next.yaml"), what="the next file")
    report = (root / "failed" / "boom.yaml.error.txt").read_text()
    assert f"boom.yaml: (file): could not be handled ({error.__name__}: " in report
    assert "the core's log has the details" in report
    assert [j["source_ref"] for j in inbox.core.store.live_jobs()] == ["next.yaml"]
    assert inbox.core.inbox._task is not None and not inbox.core.inbox._task.done()
    assert any(
        r.getMessage() == "inbox: boom.yaml could not be handled" and r.exc_info
        for r in caplog.records
    )


async def test_an_unexpected_error_while_queuing_keeps_the_file_and_the_watcher(
    inbox: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past judging (queuing, moving), an unforeseen error leaves the file where it is with the
    error logged; the next file is queued, and the file is tried again (its jobs made once)."""
    service = inbox.core.service
    real = service.submit_prepared
    calls: list[str] = []

    async def flaky(jobs: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
        calls.append(jobs[0]["source_ref"])
        if calls.count("stuck.yaml") == 1 and jobs[0]["source_ref"] == "stuck.yaml":
            raise RuntimeError("injected")
        return await real(jobs, **where)

    monkeypatch.setattr(service, "submit_prepared", flaky)
    root = inbox.settings.inbox_path
    write_atomically(root / "stuck.yaml", b"prompt: raises once while queued\n")
    await wait_for(lambda: "stuck.yaml" in calls, what="the first try of stuck.yaml")
    write_atomically(root / "next.yaml", b"prompt: the file after it\n")
    await wait_for(lambda: settled(inbox, "next.yaml", "stuck.yaml"), what="both files")
    assert sorted(j["source_ref"] for j in inbox.core.store.live_jobs()) == [
        "next.yaml",
        "stuck.yaml",
    ]
    assert calls.count("stuck.yaml") == 2
    assert any(
        "stuck.yaml could not be handled; it stays and is tried again later" in r.getMessage()
        for r in caplog.records
    )


async def test_the_watcher_outlives_its_own_failure(
    inbox: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure outside any one file (here: a scan) is logged, and the watcher watches again
    a moment later instead of ending for good."""
    watcher = inbox.core.inbox
    real = watcher._scan
    failures: list[str] = []

    def scan() -> dict[str, tuple[int, int]]:
        if not failures:
            failures.append("scan")
            raise RuntimeError("injected")
        return real()

    monkeypatch.setattr(watcher, "_scan", scan)
    write_atomically(inbox.settings.inbox_path / "after.yaml", b"prompt: after the failure\n")
    await wait_for(lambda: settled(inbox, "after.yaml"), what="the file after the failure")
    assert failures == ["scan"]
    assert [j["source_ref"] for j in inbox.core.store.live_jobs()] == ["after.yaml"]
    assert any(
        "the watcher failed; watching" in r.getMessage() and r.exc_info for r in caplog.records
    )


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
