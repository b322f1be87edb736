"""What more than one test module uses, by subject. Test modules import from here (or from
conftest.py), never from one another: tests/test_layout.py checks it.

auth: sign-in clients and cookies; browser: Chromium and the phone page; civitai: the fake Civitai
and a core pointed at it; docker_lane: the Docker daemon, base image and build; images: PNG bytes;
inbox: a watched inbox; jobfiles: job file texts; model_files: model files on disk; net: loopback
network faults; openapi: responses checked against the document; powercut: a file system that
forgets what was not fsynced; processes: a `mobilesd serve` subprocess, memory readings;
schema_fuzz: Hypothesis strategies from JSON schemas; tmux: a private tmux server; tui: the TUI
against a real core; tui_fakes: a fake core for the TUI snapshots.
"""
