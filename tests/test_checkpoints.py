"""Resolving a job's checkpoint_name to the exact title the server reports."""

from __future__ import annotations

import pytest

from mobilesd_core.forge.models import (
    CheckpointAmbiguous,
    CheckpointInfo,
    CheckpointNotFound,
    resolve_checkpoint,
    title_matches_info,
)

WINDOWS = [
    CheckpointInfo.from_forge(
        {
            "title": "SDXL\\juggernautXL_v9.safetensors [a1b2c3d4e5]",
            "model_name": "SDXL_juggernautXL_v9",
            "hash": "a1b2c3d4e5",
            "sha256": "a1b2c3d4e5" + "0" * 54,
        }
    ),
    CheckpointInfo.from_forge(
        {
            "title": "sd15\\dreamshaper_8.safetensors [0123456789]",
            "model_name": "sd15_dreamshaper_8",
            "hash": "0123456789",
            "sha256": None,
        }
    ),
    CheckpointInfo.from_forge(
        {"title": "flux\\flux1-dev.safetensors", "model_name": "flux_flux1-dev", "hash": None}
    ),
]


@pytest.mark.parametrize(
    "wanted",
    [
        "SDXL\\juggernautXL_v9.safetensors [a1b2c3d4e5]",  # exact title
        "SDXL/juggernautXL_v9.safetensors",  # forward slashes
        "SDXL/juggernautXL_v9",  # no extension
        "SDXL/juggernautXL_v9.safetensors [ffffffffff]",  # stale hash suffix
        "juggernautXL_v9",  # basename
        "juggernautXL_v9.safetensors",
        "SDXL_juggernautXL_v9",  # model_name
        "a1b2c3d4e5",  # short hash
        "sdxl/JuggernautXL_V9.safetensors",  # case differs: last resort
    ],
)
def test_forms_resolve_to_the_server_title(wanted: str) -> None:
    found = resolve_checkpoint(wanted, WINDOWS)
    assert found.title == "SDXL\\juggernautXL_v9.safetensors [a1b2c3d4e5]"


def test_unhashed_model_resolves() -> None:
    assert resolve_checkpoint("flux/flux1-dev", WINDOWS).title == "flux\\flux1-dev.safetensors"


def test_not_found_names_closest() -> None:
    with pytest.raises(CheckpointNotFound) as err:
        resolve_checkpoint("sdxl/juggernautXL_v8.safetensors", WINDOWS, server="gpu1")
    assert "SDXL\\juggernautXL_v9.safetensors [a1b2c3d4e5]" in err.value.message
    assert "gpu1" in err.value.message
    assert not err.value.transient


def test_ambiguous_basename_is_an_error() -> None:
    models = [
        CheckpointInfo.from_forge({"title": "a/model.safetensors", "model_name": "a_model"}),
        CheckpointInfo.from_forge({"title": "b/model.safetensors", "model_name": "b_model"}),
    ]
    with pytest.raises(CheckpointAmbiguous):
        resolve_checkpoint("model", models)
    assert resolve_checkpoint("b/model", models).title == "b/model.safetensors"


def test_info_mismatch_detected() -> None:
    ck = WINDOWS[0]
    assert title_matches_info(ck, {"sd_model_hash": "a1b2c3d4e5", "sd_model_name": "x"})
    assert not title_matches_info(ck, {"sd_model_hash": "0123456789"})
    assert title_matches_info(WINDOWS[2], {"sd_model_name": "flux1-dev"})
    assert not title_matches_info(WINDOWS[2], {"sd_model_name": "dreamshaper_8"})
