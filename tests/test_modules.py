"""Modules (VAE, text encoders), styles, extensions (ADetailer, ControlNet) and the refiner as
job fields: checked against each server's own lists, routed to the servers that have them,
refused at submit when none has, and sent in Forge's shapes. Real core, real simulators.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from mobilesd_core.forge.infotext import parse_infotext
from mobilesd_core.forge.simulator import SimulatorConfig

from .conftest import Harness, wait_for

FLUX = "flux/flux1-dev-fp8"
FLUX_MODULES = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"]


def sim_config(name: str, **fields: Any) -> SimulatorConfig:
    return SimulatorConfig(step_ms=2, switch_ms=5, name=name, **fields)


async def add(harness: Harness, alias: str, **fields: Any) -> Any:
    """A simulator whose lists (models, modules, styles, scripts) the core has read."""
    sim = await harness.add_sim(alias, sim_config(alias, **fields))
    await wait_for(
        lambda: harness.core.registry.runtimes[alias].catalog is not None,
        what=f"{alias}'s lists",
    )
    return sim


async def post(harness: Harness, **params: Any) -> httpx.Response:
    params.setdefault("prompt", "a lighthouse at dusk")
    params.setdefault("steps", 4)
    params.setdefault("width", 64)
    params.setdefault("height", 64)
    return await harness.api.post("/api/v1/generate", json={"generation_params": params})


def problems(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {d["path"]: d["message"] for d in response.json()["error"]["details"]}


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---- item 3: override_settings merged, modules -------------------------------------------


async def test_extra_override_settings_survive_a_checkpoint(harness: Harness) -> None:
    """Before: any `extra.override_settings` was replaced wholesale once checkpoint_name or
    clip_skip was set; now they are merged, the job's fields winning on their own keys."""
    sim = await add(harness, "gpu1")
    job_id = await harness.submit(
        checkpoint_name="sdxl/juggernautXL_v9",
        clip_skip=2,
        extra={"override_settings": {"eta_noise_seed_delta": 31337}},
    )
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    sent = sim.sim.generations[-1].payload["override_settings"]
    assert sent["eta_noise_seed_delta"] == 31337
    assert sent["sd_model_checkpoint"].startswith("sdxl/juggernautXL_v9.safetensors")
    assert sent["CLIP_stop_at_last_layers"] == 2


async def test_extra_that_would_be_dropped_is_refused(harness: Harness) -> None:
    found = problems(
        await post(
            harness,
            checkpoint_name="sdxl/juggernautXL_v9",
            extra={"override_settings": {"sd_model_checkpoint": "other"}, "steps": 9},
        )
    )
    message = found["generation_params.extra"]
    assert (
        "override_settings.sd_model_checkpoint would be replaced by the job's checkpoint_name"
        in message
    )
    assert "override_settings.sd_model_checkpoint" in message and "checkpoint_name" in message
    assert "'steps' is set from the job's own fields" in message
    # Without the field that owns it, the key passes through as before.
    assert (
        await post(harness, extra={"override_settings": {"sd_model_checkpoint": "x"}})
    ).status_code == 202


async def test_flux_job_with_modules_goes_only_where_they_are(
    harness: Harness, tmp_path: Path
) -> None:
    empty = tmp_path / "no-modules"
    empty.mkdir()
    plain = await add(harness, "plain", vae_dir=str(empty))  # Forge without Flux's files
    flux = await add(harness, "flux")
    ids = [
        await harness.submit(checkpoint_name=FLUX, modules=FLUX_MODULES, seed=n) for n in range(3)
    ]
    for job_id in ids:
        job = await harness.wait_status(job_id, "completed", "failed")
        assert job["status"] == "completed", job["result_details"]
        assert job["assigned_server_alias"] == "flux"
    assert plain.sim.generations == []
    record = flux.sim.generations[-1]
    assert [Path(m).name for m in record.modules] == FLUX_MODULES
    assert record.payload["override_settings"]["forge_additional_modules"] == FLUX_MODULES
    # The image and its sidecar carry the modules as Forge writes them.
    name = job["result_details"]["images"][0]
    path = harness.settings.gallery_path / name
    with Image.open(path) as img:
        parsed = parse_infotext(img.info["parameters"])
    assert [parsed[f"Module {i}"] for i in (1, 2, 3)] == [Path(m).stem for m in FLUX_MODULES]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["generation_params"]["modules"] == FLUX_MODULES


async def test_a_checkpoint_job_resets_an_earlier_jobs_modules(harness: Harness) -> None:
    """Forge keeps the modules selected like the model: a job naming a checkpoint without
    modules sends none, so Flux's VAE and text encoders do not ride along with SDXL."""
    sim = await add(harness, "gpu1")
    first = await harness.submit(checkpoint_name=FLUX, modules=FLUX_MODULES)
    await harness.wait_status(first, "completed")
    second = await harness.submit(checkpoint_name="sdxl/juggernautXL_v9")
    job = await harness.wait_status(second, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert sim.sim.generations[-1].modules == []


async def test_unknown_module_is_refused_with_the_closest_names(harness: Harness) -> None:
    await add(harness, "gpu1")
    found = problems(await post(harness, checkpoint_name=FLUX, modules=["ae.safetensor"]))
    message = found["generation_params.modules[0]"]
    assert message.startswith("module 'ae.safetensor' is not on any server")
    assert "closest: 'ae.safetensors'" in message


async def test_old_build_lists_its_vaes_at_sd_vae(harness: Harness) -> None:
    """No /sd-modules (A1111): its /sd-vae is the list, and the VAE goes as `sd_vae`."""
    sim = sim_config("old", sd_vae_route=True)
    server = await harness.add_sim("old", sim)
    server.sim.set_fault("404", path="/sd-modules")
    await harness.core.registry.catalog(harness.core.registry.runtimes["old"], refresh=True)
    job_id = await harness.submit(modules=["ae.safetensors"])
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    sent = server.sim.generations[-1].payload["override_settings"]
    assert sent["sd_vae"] == "ae.safetensors" and "forge_additional_modules" not in sent
    # Text encoders are not on /sd-vae: refused, naming the field.
    found = problems(await post(harness, modules=["clip_l.safetensors"]))
    assert (
        "module 'clip_l.safetensors' is not on any server" in found["generation_params.modules[0]"]
    )


async def test_server_without_any_module_list_says_so(harness: Harness) -> None:
    server = await harness.add_sim("bare", sim_config("bare"))
    server.sim.set_fault("404", path="/sd-modules")
    await harness.core.registry.catalog(harness.core.registry.runtimes["bare"], refresh=True)
    found = problems(await post(harness, modules=["ae.safetensors"]))
    assert found["generation_params.modules[0]"] == (
        "module 'ae.safetensors' cannot be used on any server: it lists no modules "
        "(no /sdapi/v1/sd-modules or /sd-vae)"
    )


# ---- item 4: extensions and refiner ------------------------------------------------------


async def test_adetailer_and_controlnet_reach_forge_in_their_shapes(harness: Harness) -> None:
    sim = await add(harness, "gpu1", adetailer=True)
    job_id = await harness.submit(
        checkpoint_name="sd15/dreamshaper_8",
        adetailer=[{"model": "face_yolov8n.pt", "prompt": "a smiling face"}],
        controlnet=[
            {"module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "image": png_b64()}
        ],
        extra={"alwayson_scripts": {"seed": {"args": []}}},
    )
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    state = (await httpx.AsyncClient().get(f"{sim.url}/_sim/state")).json()
    assert sorted(state["generations"][-1]["extensions"]) == ["adetailer", "controlnet"]
    scripts = sim.sim.generations[-1].payload["alwayson_scripts"]
    assert set(scripts) == {"seed", "ADetailer", "ControlNet"}  # the user's entry kept
    enable, skip_img2img, tab = scripts["ADetailer"]["args"]
    assert (enable, skip_img2img) == (True, False)
    assert tab["ad_model"] == "face_yolov8n.pt" and tab["ad_prompt"] == "a smiling face"
    (unit,) = scripts["ControlNet"]["args"]
    assert unit["module"] == "canny" and unit["enabled"] is True
    with Image.open(harness.settings.gallery_path / job["result_details"]["images"][0]) as img:
        parsed = parse_infotext(img.info["parameters"])
    assert parsed["ADetailer model"] == "face_yolov8n.pt"
    assert "Module: canny" in parsed["ControlNet 0"]


async def test_extension_job_goes_to_the_server_that_has_it(harness: Harness) -> None:
    without = await add(harness, "plain")
    with_it = await add(harness, "detailer", adetailer=True)
    ids = [await harness.submit(adetailer=[{"model": "hand_yolov8n.pt"}], seed=n) for n in range(3)]
    for job_id in ids:
        job = await harness.wait_status(job_id, "completed", "failed")
        assert job["assigned_server_alias"] == "detailer", job["result_details"]
    assert without.sim.generations == [] and len(with_it.sim.generations) == 3


async def test_no_server_with_the_extension_is_a_clear_error(harness: Harness) -> None:
    await add(harness, "gpu1")  # ADetailer not installed
    await add(harness, "gpu2", controlnet=False)
    found = problems(await post(harness, adetailer=[{"model": "face_yolov8n.pt"}]))
    assert found == {
        "generation_params.adetailer": "the ADetailer extension is not installed on any server"
    }
    # ControlNet on gpu1 only, targeted at gpu2: the target is named.
    response = await harness.api.post(
        "/api/v1/generate",
        json={
            "target_server_alias": "gpu2",
            "generation_params": {
                "prompt": "x",
                "controlnet": [{"module": "reference_only", "image": png_b64()}],
            },
        },
    )
    assert problems(response) == {
        "generation_params.controlnet": "the ControlNet extension is not installed on server 'gpu2'"
    }


async def test_unknown_extension_models_are_refused_with_the_closest(harness: Harness) -> None:
    await add(harness, "gpu1", adetailer=True)
    found = problems(
        await post(
            harness,
            adetailer=[{"model": "face_yolov8.pt"}],
            controlnet=[{"module": "cany", "model": "control_v11p_sd15_cany", "image": png_b64()}],
        )
    )
    assert "'face_yolov8n.pt'" in found["generation_params.adetailer[0].model"]
    assert "closest: 'canny'" in found["generation_params.controlnet[0].module"]
    assert (
        "closest: 'control_v11p_sd15_canny [d14c016b]'"
        in found["generation_params.controlnet[0].model"]
    )


async def test_refiner_is_checked_like_a_checkpoint(harness: Harness) -> None:
    sim = await add(harness, "gpu1")
    found = problems(
        await post(harness, checkpoint_name=FLUX, refiner_checkpoint="sdxl/juggernautXL_v8")
    )
    message = found["generation_params.refiner_checkpoint"]
    assert message.startswith("refiner checkpoint 'sdxl/juggernautXL_v8' is not on any server")
    assert "closest: sdxl/juggernautXL_v9.safetensors" in message
    assert (
        "refiner_checkpoint"
        in problems(await post(harness, refiner_switch_at=0.5))[
            "generation_params.refiner_switch_at"
        ]
    )
    job_id = await harness.submit(refiner_checkpoint="juggernautXL_v9", refiner_switch_at=0.6)
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    payload = sim.sim.generations[-1].payload
    assert payload["refiner_checkpoint"].startswith("sdxl/juggernautXL_v9.safetensors [")
    assert payload["refiner_switch_at"] == 0.6


# ---- item 5: styles -----------------------------------------------------------------------


async def test_unknown_style_is_refused_with_the_closest_names(harness: Harness) -> None:
    sim = await add(harness, "gpu1")
    found = problems(await post(harness, styles=["cinematik"]))
    assert found["generation_params.styles[0]"] == (
        "style 'cinematik' is not on any server; closest: 'cinematic'"
    )
    job_id = await harness.submit(styles=["cinematic"])
    job = await harness.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", job["result_details"]
    assert sim.sim.generations[-1].payload["styles"] == ["cinematic"]


async def test_editing_a_job_to_an_unknown_style_is_refused(harness: Harness) -> None:
    await add(harness, "gpu1")
    assert (await harness.api.post("/api/v1/queue/pause")).status_code == 200
    job_id = await harness.submit(styles=["watercolor"])
    response = await harness.api.patch(
        f"/api/v1/queue/jobs/{job_id}", json={"generation_params": {"styles": ["watercolour"]}}
    )
    assert "closest: 'watercolor'" in problems(response)["generation_params.styles[0]"]
    assert (await harness.job(job_id))["generation_params"]["styles"] == ["watercolor"]


async def test_needs_spread_over_servers_fail_naming_what_each_lacks(
    harness: Harness, tmp_path: Path
) -> None:
    """Each name is on some server (so submit accepts it), but no server has them all: the
    job fails at once, without being sent anywhere, saying what each server lacks."""
    empty = tmp_path / "no-modules"
    empty.mkdir()
    one = await add(harness, "gpu1", adetailer=True, vae_dir=str(empty))
    two = await add(harness, "gpu2")
    job_id = await harness.submit(
        modules=["ae.safetensors"], adetailer=[{"model": "face_yolov8n.pt"}]
    )
    job = await harness.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed"
    assert job["result_details"]["error"] == (
        "no server has everything the job needs: 'gpu1' lacks module 'ae.safetensors'; "
        "'gpu2' lacks extension 'ADetailer'"
    )
    assert one.sim.generations == [] == two.sim.generations
