"""The simulator answers as the real Forge did in the conformance run (docs/forge-conformance.md):
`/sdapi/v1/progress` without an invented `current_task`, styles files with their dividers, the
VAE/text-encoder folder, PNG Info, and the web UI's Gradio queue."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mobilesd_core.forge.simulator import (
    SimServer,
    SimulatorConfig,
    add_simulator_arguments,
    config_from_args,
)

from .conftest import wait_for

API = "/sdapi/v1"


@pytest.fixture
async def webui() -> AsyncIterator[tuple[SimServer, httpx.AsyncClient]]:
    async with (
        SimServer(SimulatorConfig(step_ms=20, switch_ms=0, webui=True)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as http,
    ):
        yield srv, http


async def test_progress_has_forges_keys_only(
    webui: tuple[SimServer, httpx.AsyncClient],
) -> None:
    """Forge's ProgressResponse model has no `current_task` (its API imports the name by value,
    and the field is not in the model): neither idle nor busy is one sent."""
    srv, http = webui
    keys = {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert set((await http.get(f"{API}/progress")).json()) == keys
    job = asyncio.create_task(http.post(f"{API}/txt2img", json={"steps": 20}))
    await wait_for(lambda: srv.sim.state.job_count > 0, what="a running job")
    assert set((await http.get(f"{API}/progress")).json()) == keys
    await job


async def test_styles_files_with_dividers_and_the_vae_folder(tmp_path: Path) -> None:
    first, second = tmp_path / "styles.csv", tmp_path / "styles_integrated.csv"
    first.write_text('name,prompt,negative_prompt\nnoir,"{prompt}, film noir",color\n')
    second.write_text("\ufeffname,prompt,negative_prompt\nplain,,text\n")
    vaes = tmp_path / "VAE"
    vaes.mkdir()
    (vaes / "vae.safetensors").write_bytes(b"x")
    config = SimulatorConfig(styles_files=[str(first), str(second)], vae_dir=str(vaes))
    async with SimServer(config) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        styles = (await http.get(f"{API}/prompt-styles")).json()
        modules = (await http.get(f"{API}/sd-modules")).json()
        answer = await http.post(
            f"{API}/txt2img", json={"prompt": "a cat", "styles": ["noir"], "steps": 1}
        )
    assert styles == [
        {
            "name": "---------------- STYLES ----------------",
            "prompt": None,
            "negative_prompt": None,
        },
        {"name": "noir", "prompt": "{prompt}, film noir", "negative_prompt": "color"},
        {
            "name": "---------- STYLES_INTEGRATED -----------",
            "prompt": None,
            "negative_prompt": None,
        },
        {"name": "plain", "prompt": "", "negative_prompt": "text"},
    ]
    assert modules == [{"model_name": "vae.safetensors", "filename": str(vaes / "vae.safetensors")}]
    assert json.loads(answer.json()["info"])["prompt"] == "a cat, film noir"


async def test_one_styles_file_has_no_divider(tmp_path: Path) -> None:
    only = tmp_path / "mine.csv"
    only.write_text("name,prompt,negative_prompt\nnoir,film noir,\n")
    async with (
        SimServer(SimulatorConfig(styles_files=[str(only)])) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        styles = (await http.get(f"{API}/prompt-styles")).json()
    assert [s["name"] for s in styles] == ["noir"]


async def test_png_info_reads_what_txt2img_wrote(
    webui: tuple[SimServer, httpx.AsyncClient],
) -> None:
    _, http = webui
    answer = await http.post(
        f"{API}/txt2img",
        json={"prompt": "a cat, at dusk", "negative_prompt": "dog", "steps": 3, "seed": 7},
    )
    image = answer.json()["images"][0]
    info = (await http.post(f"{API}/png-info", json={"image": image})).json()
    assert info["info"].startswith("a cat, at dusk\nNegative prompt: dog\nSteps: 3")
    params = info["parameters"]
    assert params["Prompt"] == "a cat, at dusk" and params["Negative prompt"] == "dog"
    assert (params["Steps"], params["Seed"], params["Size-1"], params["Size-2"]) == (
        "3",
        "7",
        "512",
        "512",
    )
    as_data_url = await http.post(
        f"{API}/png-info", json={"image": f"data:image/png;base64,{image}"}
    )
    assert as_data_url.json()["parameters"] == params
    bad = await http.post(f"{API}/png-info", json={"image": base64.b64encode(b"no").decode()})
    assert (bad.status_code, bad.json()) == (500, {"detail": "Invalid encoded image"})


async def _queue(http: httpx.AsyncClient, fields: dict[str, Any]) -> tuple[str, str, str]:
    config = (await http.get("/config")).json()
    props = {c["id"]: c["props"] for c in config["components"]}
    dependency = next(d for d in config["dependencies"] if d["api_name"] == "txt2img")
    data = [fields.get(props[i].get("label"), props[i].get("value")) for i in dependency["inputs"]]
    task_id = f"task({secrets.token_hex(4)})"
    data[0] = task_id
    session = secrets.token_hex(4)
    join = await http.post(
        "/queue/join",
        json={"data": data, "fn_index": dependency["id"], "session_hash": session},
    )
    assert join.status_code == 200
    return task_id, session, join.json()["event_id"]


async def _messages(http: httpx.AsyncClient, session: str) -> list[dict[str, Any]]:
    out = []
    async with http.stream("GET", "/queue/data", params={"session_hash": session}) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
    return out


async def test_web_ui_queue_runs_a_txt2img_as_forge_does(
    webui: tuple[SimServer, httpx.AsyncClient],
) -> None:
    """Generate pressed in the web UI: the job is the task id in `state.job`, it is in
    `/internal/progress`, and its flags are reset afterwards (wrap_gradio_call)."""
    srv, http = webui
    config = (await http.get("/config")).json()
    assert (config["version"], config["protocol"]) == ("4.40.0", "sse_v3")
    fields = {"Prompt": "from the page", "Sampling steps": 10, "Seed": 5, "Width": 64}
    task_id, session, event_id = await _queue(http, fields)
    listening = asyncio.create_task(_messages(http, session))
    await wait_for(lambda: srv.sim.state.job == task_id, what="the task to run")
    progress = (await http.post("/internal/progress", json={"id_task": task_id})).json()
    assert progress["active"]
    await http.post(f"{API}/interrupt")
    messages = await listening
    assert [m["msg"] for m in messages] == [
        "estimation",
        "process_starts",
        "process_completed",
        "close_stream",
    ]
    done = messages[2]
    assert done["event_id"] == event_id and done["success"]
    gallery, info, *_ = done["output"]["data"]
    assert len(gallery) == 1 and json.loads(info)["seed"] == 5
    (run,) = srv.sim.generations
    assert (run.task_id, run.prompt, run.steps, run.width, run.interrupted) == (
        task_id,
        "from the page",
        10,
        64,
        True,
    )
    state = (await http.get(f"{API}/progress")).json()["state"]
    assert state["interrupted"] is False and state["job"] == "" and state["job_count"] == 0
    assert (await http.post("/internal/progress", json={"id_task": task_id})).json()["completed"]


async def test_web_ui_queue_waits_for_the_generation_lock(
    webui: tuple[SimServer, httpx.AsyncClient],
) -> None:
    srv, http = webui
    api = asyncio.create_task(http.post(f"{API}/txt2img", json={"steps": 15}))
    await wait_for(lambda: srv.sim.busy, what="the API job")
    task_id, session, _ = await _queue(http, {"Sampling steps": 2})
    waiting = (await http.post("/internal/progress", json={"id_task": task_id})).json()
    assert waiting["queued"] and waiting["textinfo"] == "In queue: 1/1"
    messages = await _messages(http, session)
    await api
    assert messages[-2]["success"]
    assert [g.task_id for g in srv.sim.generations][1] == task_id


async def test_gradio_routes_only_with_the_web_ui() -> None:
    async with SimServer(SimulatorConfig()) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        assert (await http.get("/config")).status_code == 404
        assert (await http.post("/queue/join", json={})).status_code == 404


def test_cli_arguments_for_real_folders(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    argv = ["--checkpoints", "", "--models-dir", str(tmp_path), "--vae-dir", str(tmp_path)]
    argv += ["--styles-file", "a.csv", "--styles-file", "b.csv"]
    config = config_from_args(parser.parse_args(argv))
    assert config.checkpoints == []  # only what --models-dir holds
    assert config.vae_dir == str(tmp_path)
    assert config.styles_files == ["a.csv", "b.csv"]


async def test_a_real_lora_file_is_listed_and_hashed_as_forge_does(tmp_path: Path) -> None:
    """Forge lists a LoRA file with its path and safetensors metadata, and writes the first 12
    hex digits of the file's SHA-256 as its `Lora hashes` (not the AutoV3 of A1111)."""
    header = json.dumps({"__metadata__": {"ss_network_dim": "4"}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\0" * 64
    (tmp_path / "ink.safetensors").write_bytes(data)
    config = SimulatorConfig(loras=[], lora_dir=str(tmp_path), step_ms=1, switch_ms=0)
    async with SimServer(config) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        listed = (await http.get(f"{API}/loras")).json()
        answer = await http.post(f"{API}/txt2img", json={"prompt": "<lora:ink:1>", "steps": 1})
    path = str((tmp_path / "ink.safetensors").resolve())
    assert listed == [
        {"name": "ink", "alias": "ink", "path": path, "metadata": {"ss_network_dim": "4"}}
    ]
    infotext = json.loads(answer.json()["info"])["infotexts"][0]
    assert f'Lora hashes: "ink: {hashlib.sha256(data).hexdigest()[:12]}"' in infotext


# Fields of Forge's generated request models at dfdcbab6 (`modules/api/models.py`: the init
# parameters of StableDiffusionProcessing and its Txt2Img / Img2Img subclass, less
# API_NOT_ALLOWED, plus the additional fields), read from the source. `parameters` in the answer
# is `vars(request)`: every one of them, `include_init_images` included.
_COMMON_FIELDS = {
    "alwayson_scripts", "batch_size", "cfg_scale", "comments", "denoising_strength",
    "disable_extra_networks", "distilled_cfg_scale", "do_not_save_grid", "do_not_save_samples",
    "eta", "firstpass_image", "force_task_id", "height", "hr_distilled_cfg", "infotext",
    "n_iter", "negative_prompt", "override_settings", "override_settings_restore_afterwards",
    "prompt", "refiner_checkpoint", "refiner_switch_at", "restore_faces", "s_churn",
    "s_min_uncond", "s_noise", "s_tmax", "s_tmin", "sampler_index", "sampler_name",
    "save_images", "scheduler", "script_args", "script_name", "seed", "seed_resize_from_h",
    "seed_resize_from_w", "send_images", "steps", "styles", "subseed", "subseed_strength",
    "tiling", "width",
}  # fmt: skip
TXT2IMG_FIELDS = _COMMON_FIELDS | {
    "enable_hr", "firstphase_height", "firstphase_width", "hr_additional_modules", "hr_cfg",
    "hr_checkpoint_name", "hr_negative_prompt", "hr_prompt", "hr_resize_x", "hr_resize_y",
    "hr_sampler_name", "hr_scale", "hr_scheduler", "hr_second_pass_steps", "hr_upscaler",
}  # fmt: skip
IMG2IMG_FIELDS = _COMMON_FIELDS | {
    "image_cfg_scale", "include_init_images", "init_images", "initial_noise_multiplier",
    "inpaint_full_res", "inpaint_full_res_padding", "inpainting_fill", "inpainting_mask_invert",
    "latent_mask", "mask", "mask_blur", "mask_blur_x", "mask_blur_y", "mask_round",
    "resize_mode",
}  # fmt: skip


async def test_echoed_parameters_have_forges_fields(
    webui: tuple[SimServer, httpx.AsyncClient],
) -> None:
    _, http = webui
    txt = await http.post(f"{API}/txt2img", json={"steps": 1, "width": 64, "height": 64})
    assert set(txt.json()["parameters"]) == TXT2IMG_FIELDS
    picture = base64.b64encode(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
            "0000000c4944415408d763f8ffff3f0005fe02fea7d6a4b10000000049454e44ae426082"
        )
    ).decode()
    img = await http.post(
        f"{API}/img2img",
        json={"steps": 1, "width": 64, "height": 64, "init_images": [picture]},
    )
    assert img.status_code == 200, img.text
    assert set(img.json()) == {"images", "parameters", "info"}
    assert set(img.json()["parameters"]) == IMG2IMG_FIELDS
