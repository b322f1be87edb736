"""The inbox's rules without a watcher: which names count, when a file is complete, the ledger."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mobilesd_core.inbox.inside import LinkOnPath, first_link, open_inside
from mobilesd_core.inbox.ledger import FileKey, IngestLedger
from mobilesd_core.inbox.names import Kind, classify, skip_dir
from mobilesd_core.inbox.outcome import free_name, render_report
from mobilesd_core.inbox.stability import StabilityTracker
from mobilesd_core.schema import FieldProblem


@pytest.mark.parametrize(
    "name",
    [
        "._job.yaml",
        ".DS_Store",
        "Thumbs.db",
        "THUMBS.DB",
        "desktop.ini",
        "~$job.yaml",
        ".~lock.job.yaml#",
        ".ocTransferId123.part",
        "job.yaml.part",
        "job.yaml.partial",
        "job.yaml.x7f3.partial",
        "job.yaml.filepart",
        "job.yaml.crdownload",
        "job.yaml.tmp",
        "job.yaml.swp",
        "job.yaml~",
        ".syncthing.job.yaml.tmp",
        "~syncthing~job.yaml.tmp",
        ".hidden.yaml",
    ],
)
def test_temporary_and_hidden_names_are_left_alone(name: str) -> None:
    assert classify(name) is Kind.TEMPORARY


@pytest.mark.parametrize("name", ["job.yaml", "Job.YML", "a b (copy).yaml", "sweep.v2.yml"])
def test_job_files(name: str) -> None:
    assert classify(name) is Kind.JOB


@pytest.mark.parametrize("name", ["notes.txt", "job.json", "yaml", "image.png"])
def test_other_files(name: str) -> None:
    assert classify(name) is Kind.OTHER


@pytest.mark.parametrize(
    "name", ["processed", "failed", "@eaDir", ".@__thumb", "#recycle", "__MACOSX", ".stfolder"]
)
def test_skipped_folders(name: str) -> None:
    assert skip_dir(name)
    assert not skip_dir("portraits")


def test_stability_needs_a_quiet_window_after_the_last_change() -> None:
    tracker = StabilityTracker(1.0)
    assert not tracker.observe("a.yaml", 10, 1, now=0.0)
    assert not tracker.observe("a.yaml", 10, 1, now=0.9)
    assert not tracker.observe("a.yaml", 20, 2, now=1.5)  # grew: the window starts again
    assert tracker.due_in(1.5) == pytest.approx(1.0)
    assert not tracker.observe("a.yaml", 20, 2, now=2.4)
    assert tracker.observe("a.yaml", 20, 2, now=2.5)
    tracker.doubt("a.yaml", now=2.5)  # did not parse: one more window
    assert not tracker.observe("a.yaml", 20, 2, now=3.0)
    assert tracker.observe("a.yaml", 20, 2, now=3.5)


def test_an_empty_file_waits_several_windows() -> None:
    tracker = StabilityTracker(1.0, empty_windows=5)
    assert not tracker.observe("e.yaml", 0, 1, now=0.0)
    assert not tracker.observe("e.yaml", 0, 1, now=4.9)
    assert tracker.observe("e.yaml", 0, 1, now=5.0)


def test_the_ledger_recognises_an_interrupted_file_and_forgets_moved_ones(tmp_path: Path) -> None:
    key = FileKey("batch.yaml", 120, 1_700_000_000_000_000_000, "ab" * 32)
    ledger = IngestLedger(tmp_path)
    ledger.load()
    ledger.record_intent(key, ["J1", "J2"])

    after_crash = IngestLedger(tmp_path)
    after_crash.load()
    intent = after_crash.open_intent(key)
    assert intent is not None and intent.job_ids == ["J1", "J2"]
    # The same name with other content (or another mtime) is another file.
    assert after_crash.open_intent(FileKey("batch.yaml", 120, key.mtime_ns + 1, key.sha256)) is None

    after_crash.record_moved(key, "processed/batch.yaml", "2026-11-25T10:00:00Z")
    reopened = IngestLedger(tmp_path)
    reopened.load()
    assert reopened.open_intent(key) is None
    seen = reopened.seen_before(key.sha256)
    assert seen is not None and seen.moved_to == "processed/batch.yaml"


def test_the_ledger_closes_intents_whose_file_is_gone(tmp_path: Path) -> None:
    ledger = IngestLedger(tmp_path)
    ledger.load()
    kept = FileKey("kept.yaml", 1, 1, "aa")
    gone = FileKey("gone.yaml", 1, 1, "bb")
    ledger.record_intent(kept, ["J1"])
    ledger.record_intent(gone, ["J2"])
    closed = ledger.settle_gone({"kept.yaml"})
    assert [i.key for i in closed] == [gone]
    reopened = IngestLedger(tmp_path)
    reopened.load()
    assert reopened.open_intent(kept) is not None and reopened.open_intent(gone) is None


def test_free_names_never_overwrite(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x")
    first = free_name(tmp_path, "a.yaml")
    assert first.name.startswith("a.2") and first.suffix == ".yaml"
    first.write_text("y")
    second = free_name(tmp_path, "a.yaml")
    assert second not in (tmp_path / "a.yaml", first)
    # A report name that is taken counts as taken for the file too.
    (tmp_path / "b.yaml.error.txt").write_text("old report")
    assert free_name(tmp_path, "b.yaml", also=".error.txt").name != "b.yaml"


def test_the_report_lists_every_problem_and_what_to_do() -> None:
    text = render_report(
        "job.yaml",
        [
            FieldProblem(path="steps", message="must be at most 150 (found 500)", line=2),
            FieldProblem(path="promt", message="unknown field; did you mean 'prompt'?", line=1),
        ],
    )
    assert text.splitlines()[0] == "job.yaml was not queued: 2 problems."
    assert "job.yaml:2: steps: must be at most 150 (found 500)" in text
    assert "job.yaml:1: promt: unknown field; did you mean 'prompt'?" in text
    assert "mobilesd validate" in text


def test_a_held_file_backs_off() -> None:
    tracker = StabilityTracker(1.0)
    tracker.observe("stuck.yaml", 10, 1, now=0.0)
    assert tracker.observe("stuck.yaml", 10, 1, now=1.0)
    tracker.back_off("stuck.yaml", now=1.0, windows=8)
    assert not tracker.observe("stuck.yaml", 10, 1, now=8.9)
    assert tracker.observe("stuck.yaml", 10, 1, now=9.0)


def test_paths_through_a_link_are_found_and_never_opened(tmp_path: Path) -> None:
    root, outside = tmp_path / "inbox", tmp_path / "elsewhere"
    (root / "sub" / "deeper").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "deeper" / "job.yaml").write_text("prompt: inside\n")
    (outside / "job.yaml").write_text("prompt: outside\n")
    fd, folder = open_inside(root, "sub/deeper/job.yaml")
    try:
        assert os.read(fd, 100) == b"prompt: inside\n"
    finally:
        os.close(fd)
        os.close(folder)
    assert first_link(root, "sub/deeper/job.yaml") is None
    assert first_link(root, "sub/gone.yaml") is None

    # The folder swapped for a link to a folder outside (after a check, say); a linked file.
    os.rename(root / "sub" / "deeper", tmp_path / "moved-away")
    (root / "sub" / "deeper").symlink_to(outside, target_is_directory=True)
    (root / "file.yaml").symlink_to(outside / "job.yaml")
    for rel, link in (("sub/deeper/job.yaml", "sub/deeper"), ("file.yaml", "file.yaml")):
        assert first_link(root, rel) == link
        with pytest.raises(LinkOnPath):
            open_inside(root, rel)
    with pytest.raises(FileNotFoundError):
        open_inside(root, "sub/none.yaml")
