"""Civitai links, safe file names and Content-Disposition, without a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.civitai import autov3, safetensors_bytes
from mobilesd_core.civitai.client import retry_after_seconds
from mobilesd_core.civitai.filenames import (
    MAX_NAME_BYTES,
    UnsafePath,
    disposition_filename,
    inside,
    safe_component,
    safe_filename,
)
from mobilesd_core.civitai.hashes import hash_file
from mobilesd_core.civitai.urls import BadReference, ModelRef, parse_image_ref, parse_model_ref
from mobilesd_core.library import LORAS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://civitai.com/images/123456", 123456),
        ("https://civitai.com/images/123456?postId=9&period=AllTime#x", 123456),
        ("civitai.com/images/77", 77),
        ("https://www.civitai.com/images/5/", 5),
        (" 42 ", 42),
    ],
)
def test_image_links(text: str, expected: int) -> None:
    assert parse_image_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    ["https://evil.example/images/5", "https://civitai.com/models/5", "", "images/x", "0"],
)
def test_not_image_links(text: str) -> None:
    with pytest.raises(BadReference):
        parse_image_ref(text)


def test_the_configured_base_url_counts_as_civitai() -> None:
    assert parse_image_ref("http://127.0.0.1:9/images/3", base_url="http://127.0.0.1:9") == 3
    with pytest.raises(BadReference):
        parse_image_ref("http://127.0.0.1:9/images/3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://civitai.com/models/4201/realistic-vision", ModelRef(model_id=4201)),
        (
            "https://civitai.com/models/4201/realistic-vision?modelVersionId=130072",
            ModelRef(model_id=4201, model_version_id=130072),
        ),
        ("https://civitai.com/model-versions/130072", ModelRef(model_version_id=130072)),
        (
            "https://civitai.com/api/download/models/130072?type=Model&format=SafeTensor&fileId=9",
            ModelRef(model_version_id=130072, file_id=9),
        ),
        ("130072", ModelRef(model_version_id=130072)),
    ],
)
def test_model_links(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd.safetensors"),
        ("C:\\Windows\\system32\\x.safetensors", "x.safetensors"),
        ("nul.safetensors", "_nul.safetensors"),
        ("LPT1", "_LPT1.safetensors"),
        ("...safetensors", "safetensors.safetensors"),
        ("name. .safetensors", "name.safetensors"),
        ("a..b.safetensors", "a_b.safetensors"),
        ('a<b>c:d"e|f?g*h.safetensors', "a_b_c_d_e_f_g_h.safetensors"),
        ("model.exe", "model.exe.safetensors"),
        ("lora.pt", "lora.pt"),
        ("", "civitai_1.safetensors"),
        ("..", "civitai_1.safetensors"),
    ],
)
def test_safe_filenames(raw: str, expected: str) -> None:
    name = safe_filename(
        raw, extensions=LORAS.extensions, default_ext=".safetensors", fallback_stem="civitai_1"
    )
    assert name == expected


def test_long_names_keep_their_extension_within_the_byte_limit() -> None:
    name = safe_filename(
        "ü" * 300 + ".safetensors",
        extensions=LORAS.extensions,
        default_ext=".safetensors",
        fallback_stem="x",
    )
    assert name.endswith(".safetensors")
    assert len(name.encode()) <= MAX_NAME_BYTES
    name.encode().decode("utf-8")  # never cut inside a character
    assert len(safe_component("a/" + "b" * 400, fallback="f").encode()) <= MAX_NAME_BYTES


def test_resolved_paths_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "link").symlink_to(tmp_path / "out")
    assert inside(tmp_path / "lora", "x.safetensors") == (tmp_path / "lora" / "x.safetensors")
    for bad in ("../x", "link", "/abs"):
        with pytest.raises(UnsafePath):
            inside(tmp_path / "lora", bad + "/y" if bad == "link" else bad)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="model.safetensors"', "model.safetensors"),
        ("attachment; filename=model.safetensors", "model.safetensors"),
        (
            'attachment; filename="fallback.bin"; '
            "filename*=UTF-8''%E6%A8%A1%E5%9E%8B.safetensors",
            "模型.safetensors",
        ),
        (r'attachment; filename="a\"b.safetensors"', 'a"b.safetensors'),
        ("inline", None),
        (None, None),
    ],
)
def test_content_disposition(header: str | None, expected: str | None) -> None:
    assert disposition_filename(header) == expected


def test_retry_after_seconds_or_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("99999") == 600.0


def test_file_hashes_match_civitai_autov2_and_autov3(tmp_path: Path) -> None:
    data = safetensors_bytes(300_000, seed=5)
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    hashes = hash_file(path)
    v3 = autov3(data)
    assert v3 is not None and hashes.autov3 == v3
    assert hashes.matches(hashes.sha256[:10].upper())  # AutoV2 / Model hash
    assert hashes.matches(v3[:12])  # AutoV3 / Lora hashes
    assert not hashes.matches("abc")  # too short to mean anything
    assert not hashes.matches("0" * 10)


def test_civitai_subfolders_setting() -> None:
    from mobilesd_core.config import ConfigError, settings_from_env

    assert settings_from_env({}).civitai_subfolders is False
    assert settings_from_env({"CIVITAI_SUBFOLDERS": "1"}).civitai_subfolders is True
    assert settings_from_env({"CIVITAI_SUBFOLDERS": "no"}).civitai_subfolders is False
    with pytest.raises(ConfigError, match="CIVITAI_SUBFOLDERS='maybe' is not valid: expected 1"):
        settings_from_env({"CIVITAI_SUBFOLDERS": "maybe"})
