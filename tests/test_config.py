"""Configuration: environment names from the original plan, flags over them, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mobilesd_core.config import ConfigError, load_or_create_token, prepare, settings_from_env


def test_environment_names_and_flag_override(tmp_path: Path) -> None:
    env = {
        "PORT": "9001",
        "HOST": "0.0.0.0",
        "CONFIG_DATA_PATH": str(tmp_path / "d"),
        "STABLE_DIFFUSION_SAVE_PATH": str(tmp_path / "g"),
        "INBOX_PATH": str(tmp_path / "i"),
        "LORA_PATH": str(tmp_path / "l"),
        "CHECKPOINT_PATH": str(tmp_path / "c"),
        "INBOX_POLL_SECONDS": "5",
        "CIVITAI_BASE_URL": "http://127.0.0.1:1",
        "MODEL_SYNC_CAP_GB": "250",
    }
    settings = settings_from_env(env, port=9100)
    assert settings.model_sync_cap_gb == 250.0
    assert settings.port == 9100  # the flag wins
    assert settings.host == "0.0.0.0"
    assert settings.data_path == tmp_path / "d"
    assert settings.gallery_path == tmp_path / "g"
    assert settings.lora_path == tmp_path / "l"
    assert settings.inbox_poll_seconds == 5.0
    prepared = prepare(settings)
    assert prepared.data_path.is_dir() and prepared.gallery_path.is_dir()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PORT": "eighty"}, "PORT='eighty' is not valid: expected a whole number"),
        ({"PORT": "70000"}, "PORT=70000 is not valid"),
        ({"INBOX_POLL_SECONDS": "0"}, "INBOX_POLL_SECONDS must be a positive number"),
        ({"MODEL_SYNC_CAP_GB": "0"}, "MODEL_SYNC_CAP_GB must be positive"),
        ({"MODEL_SYNC_CAP_GB": "lots"}, "MODEL_SYNC_CAP_GB='lots' is not valid: expected a number"),
        ({"TRUSTED_PROXIES": "10.0.0.1, proxy.lan"}, "TRUSTED_PROXIES is not valid: entry 2 "),
    ],
)
def test_bad_values_are_named(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        settings_from_env(env)


def test_trusted_proxies_are_addresses_or_networks() -> None:
    settings = settings_from_env({"TRUSTED_PROXIES": "172.17.0.1 10.0.0.0/8,fd00::/8"})
    assert [str(n) for n in settings.trusted_proxies] == ["172.17.0.1/32", "10.0.0.0/8", "fd00::/8"]
    assert settings_from_env({}).trusted_proxies == ()


def test_folder_problems_name_the_variable_and_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as err:
        prepare(settings_from_env({"STABLE_DIFFUSION_SAVE_PATH": str(blocker)}))
    assert str(err.value) == f"STABLE_DIFFUSION_SAVE_PATH: {blocker} is not a folder"
    with pytest.raises(ConfigError) as err:
        prepare(settings_from_env({"CONFIG_DATA_PATH": str(blocker / "data")}))
    assert "CONFIG_DATA_PATH: folder" in str(err.value)
    assert "cannot be created (Not a directory)" in str(err.value)


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = prepare(settings_from_env({"CONFIG_DATA_PATH": str(tmp_path)}))
    token = load_or_create_token(settings)
    path = tmp_path / "access_token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32
    assert load_or_create_token(settings) == token
    explicit = settings_from_env({"CONFIG_DATA_PATH": str(tmp_path), "MOBILESD_TOKEN": "abc"})
    assert load_or_create_token(explicit) == "abc"


def test_serve_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "mobilesd_core.cli", "serve", "--data", str(blocker / "sub")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error: CONFIG_DATA_PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_command_reports_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: ok\nstesp: 20\n")
    good = Path(__file__).parent.parent / "examples" / "jobs" / "single.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "mobilesd_core.cli", "validate", str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{good}: ok, 1 job(s)" in result.stdout
    assert f"{bad}:2: stesp: unknown field; did you mean 'steps'?" in result.stdout


def test_second_instance_on_same_port_or_folder_is_refused(tmp_path: Path) -> None:
    import os
    import socket
    import time

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    port = free_port()
    env = {**os.environ, "CONFIG_DATA_PATH": str(tmp_path / "data"), "MOBILESD_TOKEN": "t"}
    env["STABLE_DIFFUSION_SAVE_PATH"] = str(tmp_path / "out")
    first = subprocess.Popen(
        [sys.executable, "-m", "mobilesd_core.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert first.stdout is not None
        deadline = time.monotonic() + 30
        while "listening on" not in first.stdout.readline():
            assert time.monotonic() < deadline and first.poll() is None
        jobs_file = tmp_path / "data" / "jobs.json"
        before = jobs_file.read_bytes() if jobs_file.exists() else None

        same_port = subprocess.run(
            [sys.executable, "-m", "mobilesd_core.cli", "serve", "--port", str(port)],
            env={**env, "CONFIG_DATA_PATH": str(tmp_path / "other")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert same_port.returncode == 2
        assert "cannot listen on" in same_port.stderr and "Traceback" not in same_port.stderr

        same_folder = subprocess.run(
            [sys.executable, "-m", "mobilesd_core.cli", "serve", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert same_folder.returncode == 2
        assert "in use by another MobileSD process" in same_folder.stderr
        assert (jobs_file.read_bytes() if jobs_file.exists() else None) == before
    finally:
        first.terminate()
        first.wait(30)
    assert first.returncode == 0
