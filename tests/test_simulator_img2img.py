"""The simulator's img2img, inpaint, extras, modules and scripts (ControlNet, ADetailer), over
real loopback HTTP, against the real Forge's request and answer shapes (`modules/api/api.py`,
`modules/api/models.py`, `modules/processing.py`, the extensions' sources)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from mobilesd_core.forge.infotext import parse_infotext
from mobilesd_core.forge.simulator import (
    SimServer,
    SimulatorConfig,
    add_simulator_arguments,
    config_from_args,
)
from mobilesd_core.forge.simulator.images import encode_png

from .conftest import wait_for

API = "/sdapi/v1"


def fast(**overrides: Any) -> SimulatorConfig:
    return SimulatorConfig(**{"step_ms": 2.0, "switch_ms": 20.0, **overrides})


@pytest.fixture
async def served() -> AsyncIterator[tuple[SimServer, httpx.AsyncClient]]:
    async with (
        SimServer(fast(adetailer=True)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10) as http,
    ):
        yield srv, http


def b64(image: Image.Image, parameters: str | None = None) -> str:
    return base64.b64encode(encode_png(image, parameters)).decode("ascii")


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def left_half_mask(size: tuple[int, int] = (64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


def decode(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


async def img2img(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"steps": 4, "width": 64, "height": 64, "seed": 3, **fields}
    response = await http.post(f"{API}/img2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    answer["info"] = json.loads(answer["info"])
    return answer


# ---- img2img --------------------------------------------------------------------------------


async def test_img2img_output_derives_from_the_init_image(
    served: tuple[SimServer, httpx.AsyncClient],
) -> None:
    srv, http = served
    red, blue = b64(solid((255, 0, 0))), b64(solid((0, 0, 255)))
    kept = await img2img(http, init_images=[red], denoising_strength=0.0, prompt="a fox")
    assert decode(kept["images"][0]).getpixel((10, 10)) == (255, 0, 0)
    from_red = await img2img(http, init_images=[red], denoising_strength=0.5, prompt="a fox")
    from_blue = await img2img(
        http, init_images=[f"data:image/png;base64,{blue}"], denoising_strength=0.5, prompt="a fox"
    )
    a, b = decode(from_red["images"][0]), decode(from_blue["images"][0])
    assert a.size == (64, 64) and a.tobytes() != b.tobytes()
    assert a.getpixel((10, 10))[0] > b.getpixel((10, 10))[0]  # red shows through
    # The answer: Forge's shapes, init images not echoed without include_init_images.
    info = from_red["info"]
    assert info["denoising_strength"] == 0.5
    fields = parse_infotext(info["infotexts"][0])
    assert fields["Denoising strength"] == "0.5" and fields["Steps"] == "4"
    params = from_red["parameters"]
    assert params["init_images"] is None and params["mask"] is None
    assert params["include_init_images"] is False and "enable_hr" not in params
    assert params["denoising_strength"] == 0.5 and params["resize_mode"] == 0
    echoed = await img2img(http, init_images=[red], include_init_images=True)
    assert echoed["parameters"]["init_images"] == [red]
    assert echoed["info"]["denoising_strength"] == 0.75  # Forge's img2img default
    kinds = [g.kind for g in srv.sim.generations]
    assert kinds == ["img2img"] * 4


async def test_img2img_runs_denoising_times_steps_under_its_own_job_name() -> None:
    """`setup_img2img_steps`: int(min(d, 0.999) * steps) + 1 sampler steps; the infotext still
    says the requested steps."""
    async with (
        SimServer(fast(step_ms=30)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10) as http,
    ):
        image = b64(solid((0, 128, 0)))
        job = asyncio.create_task(
            img2img(http, init_images=[image], steps=20, denoising_strength=0.5)
        )
        await wait_for(lambda: srv.sim.state.sampling_step > 0, what="sampling")
        state = (await http.get(f"{API}/progress")).json()["state"]
        assert (state["job"], state["sampling_steps"]) == ("scripts_img2img", 11)
        await http.post(f"{API}/interrupt")
        answer = await job
    assert len(answer["images"]) == 1 and srv.sim.generations[0].interrupted
    assert parse_infotext(answer["info"]["infotexts"][0])["Steps"] == "20"


async def test_inpaint_changes_only_the_masked_area(
    served: tuple[SimServer, httpx.AsyncClient],
) -> None:
    _, http = served
    init = solid((0, 200, 0))
    common = {
        "init_images": [b64(init)],
        "mask": b64(left_half_mask()),
        "denoising_strength": 0.9,
        "mask_blur": 0,
        "inpaint_full_res": False,
        "inpainting_fill": 1,
    }
    answer = await img2img(http, **common)
    out = decode(answer["images"][0])
    assert out.getpixel((50, 30)) == (0, 200, 0)  # outside the mask: the init image
    assert out.getpixel((10, 30)) != (0, 200, 0)  # inside: repainted
    fields = parse_infotext(answer["info"]["infotexts"][0])
    assert "Mask blur" not in fields and "Masked content" not in fields  # 1 = original
    inverted = decode((await img2img(http, **common, inpainting_mask_invert=1))["images"][0])
    assert inverted.getpixel((10, 30)) == (0, 200, 0)
    assert inverted.getpixel((50, 30)) != (0, 200, 0)
    blurred = await img2img(http, **{**common, "mask_blur": 4, "inpainting_fill": 0})
    fields = parse_infotext(blurred["info"]["infotexts"][0])
    assert (fields["Mask blur"], fields["Masked content"]) == ("4", "fill")
    small_mask = await img2img(http, **{**common, "mask": b64(left_half_mask((32, 32)))})
    resized = decode(small_mask["images"][0])  # resized like the picture, not refused
    assert resized.getpixel((50, 30)) == (0, 200, 0) and resized.getpixel((10, 30)) != (0, 200, 0)
    inverted_info = await img2img(http, **common, inpainting_mask_invert=1)
    assert parse_infotext(inverted_info["info"]["infotexts"][0])["Mask mode"] == (
        "Inpaint not masked"
    )


async def test_inpaint_only_masked_keeps_the_init_size(
    served: tuple[SimServer, httpx.AsyncClient],
) -> None:
    """ "Only masked" pastes the repainted crop back into the init image (its size); a mask of
    another size is resized, not refused; a blank mask falls back to plain img2img."""
    _, http = served
    init = solid((10, 20, 200), (96, 80))
    answer = await img2img(
        http,
        init_images=[b64(init)],
        mask=b64(left_half_mask((48, 40))),
        inpaint_full_res_padding=32,
        mask_blur=0,
    )
    out = decode(answer["images"][0])
    assert out.size == (96, 80) and out.getpixel((90, 40)) == (10, 20, 200)
    fields = parse_infotext(answer["info"]["infotexts"][0])
    assert (fields["Inpaint area"], fields["Masked area padding"], fields["Size"]) == (
        "Only masked",
        "32",
        "64x64",
    )
    blank = await img2img(
        http, init_images=[b64(init)], mask=b64(Image.new("L", (96, 80), 0)), mask_blur=0
    )
    assert decode(blank["images"][0]).size == (64, 64)
    assert "Inpaint area" not in parse_infotext(blank["info"]["infotexts"][0])


async def test_img2img_errors_as_forge_answers_them(
    served: tuple[SimServer, httpx.AsyncClient],
) -> None:
    srv, http = served
    response = await http.post(f"{API}/img2img", json={"prompt": "x"})
    assert (response.status_code, response.json()) == (404, {"detail": "Init image not found"})
    not_an_image = base64.b64encode(b"not a picture").decode()
    for fields in ({"init_images": [not_an_image]}, {"init_images": ["%%%"]}):
        response = await http.post(f"{API}/img2img", json={"steps": 2, **fields})
        assert (response.status_code, response.json()) == (500, {"detail": "Invalid encoded image"})
    good = b64(solid((1, 2, 3)))
    response = await http.post(
        f"{API}/img2img", json={"steps": 2, "init_images": [good], "mask": not_an_image}
    )
    assert (response.status_code, response.json()) == (500, {"detail": "Invalid encoded image"})
    response = await http.post(
        f"{API}/img2img", json={"steps": 2, "init_images": [good] * 3, "batch_size": 2}
    )
    assert response.status_code == 500
    assert response.json()["message"] == "bad number of images passed: 3; expecting 2 or less"
    response = await http.post(
        f"{API}/img2img", json={"init_images": [good], "denoising_strength": "much"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "denoising_strength"]
    assert srv.sim.generations == []
    two = await img2img(http, init_images=[good, b64(solid((200, 0, 0)))], batch_size=4)
    assert len(two["images"]) == 2  # the batch is the images sent


async def test_img2img_faults_like_txt2img(served: tuple[SimServer, httpx.AsyncClient]) -> None:
    srv, http = served
    srv.sim.set_fault("reset", count=1, path="/img2img")
    with pytest.raises(httpx.TransportError):
        await http.post(f"{API}/img2img", json={"steps": 3, "init_images": [b64(solid((0, 0, 0)))]})
    await wait_for(lambda: srv.sim.generations, what="the job to finish anyway")
    assert srv.sim.generations[0].kind == "img2img"


# ---- extras ---------------------------------------------------------------------------------


async def test_extras_single_and_batch(served: tuple[SimServer, httpx.AsyncClient]) -> None:
    srv, http = served
    picture = b64(solid((30, 60, 90), (64, 48)), "a painted fox\nSteps: 20")
    response = await http.post(
        f"{API}/extra-single-image",
        json={"image": picture, "upscaler_1": "Lanczos", "upscaling_resize": 2},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"html_info", "image"}
    assert body["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    out = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert out.size == (128, 96) and out.info["parameters"] == "a painted fox\nSteps: 20"
    to_size = await http.post(
        f"{API}/extra-single-image",
        json={
            "image": picture,
            "upscaler_1": "R-ESRGAN 4x+",
            "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.5,
            "resize_mode": 1,
            "upscaling_resize_w": 100,
            "upscaling_resize_h": 100,
        },
    )
    assert decode(to_size.json()["image"]).size == (100, 100)
    assert "Postprocess upscaler 2: Nearest" in to_size.json()["html_info"]
    untouched = (await http.post(f"{API}/extra-single-image", json={"image": picture})).json()
    assert untouched["html_info"] == "<p></p>" and decode(untouched["image"]).size == (64, 48)
    batch = await http.post(
        f"{API}/extra-batch-images",
        json={
            "imageList": [{"data": picture, "name": "a.png"}, {"data": picture, "name": "b.png"}],
            "upscaler_1": "Nearest",
            "upscaling_resize": 1.5,
        },
    )
    assert set(batch.json()) == {"html_info", "images"} and len(batch.json()["images"]) == 2
    assert decode(batch.json()["images"][1]).size == (96, 72)
    assert srv.sim.extras_count == 4


async def test_extras_faults(served: tuple[SimServer, httpx.AsyncClient]) -> None:
    _, http = served
    picture = b64(solid((1, 1, 1)))
    response = await http.post(
        f"{API}/extra-single-image", json={"image": picture, "upscaler_1": "Magic 8x"}
    )
    assert response.status_code == 500
    assert response.json()["error"] == "AssertionError"
    assert response.json()["message"] == "could not find upscaler named Magic 8x"
    response = await http.post(
        f"{API}/extra-single-image", json={"image": picture, "extras_upscaler_2_visibility": 2}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "extras_upscaler_2_visibility"]
    response = await http.post(
        f"{API}/extra-single-image", json={"image": picture, "resize_mode": 2}
    )
    assert response.status_code == 422
    response = await http.post(f"{API}/extra-single-image", json={})
    assert (response.status_code, response.json()) == (500, {"detail": "Invalid encoded image"})
    response = await http.post(f"{API}/extra-batch-images", json={"upscaler_1": "Lanczos"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "imageList"]


# ---- modules --------------------------------------------------------------------------------


async def test_additional_modules_override_and_infotext(
    served: tuple[SimServer, httpx.AsyncClient],
) -> None:
    """`modules_change`: names or paths matched by file name among `/sd-modules`; unknown ones
    dropped silently; each kept module is a `Module N` line after `Version`; a change of
    modules reloads the model; the option is restored after the job."""
    srv, http = served
    modules = (await http.get(f"{API}/sd-modules")).json()
    assert set(modules[0]) == {"model_name", "filename"}
    wanted = ["ae.safetensors", "/elsewhere/clip_l.safetensors", "no_such_vae.safetensors"]
    answer = await http.post(
        f"{API}/txt2img",
        json={"steps": 2, "override_settings": {"forge_additional_modules": wanted}},
    )
    info = json.loads(answer.json()["info"])
    text = info["infotexts"][0]
    assert text.endswith(", Module 1: ae, Module 2: clip_l")
    run = srv.sim.generations[-1]
    assert run.switched and [m.rsplit("/", 1)[-1] for m in run.modules] == [
        "ae.safetensors",
        "clip_l.safetensors",
    ]
    assert (await http.get(f"{API}/options")).json()["forge_additional_modules"] == []
    await http.post(f"{API}/txt2img", json={"steps": 2})
    assert srv.sim.generations[-1].switched  # back to no modules: another load
    await http.post(f"{API}/options", json={"forge_additional_modules": ["sdxl_vae.safetensors"]})
    selected = (await http.get(f"{API}/options")).json()["forge_additional_modules"]
    assert selected == ["/opt/forge/models/VAE/sdxl_vae.safetensors"]
    answer = await http.post(
        f"{API}/img2img", json={"steps": 2, "init_images": [b64(solid((9, 9, 9)))]}
    )
    assert json.loads(answer.json()["info"])["infotexts"][0].endswith("Module 1: sdxl_vae")
    low_bits = await http.post(
        f"{API}/txt2img",
        json={"steps": 2, "override_settings": {"forge_unet_storage_dtype": "float8-e4m3fn"}},
    )
    assert json.loads(low_bits.json()["info"])["infotexts"][0].endswith(
        ", Diffusion in Low Bits: float8-e4m3fn, Module 1: sdxl_vae"
    )
    response = await http.post(
        f"{API}/txt2img", json={"steps": 2, "override_settings": {"forge_additional_modules": 5}}
    )
    assert response.status_code == 500 and response.json()["error"] == "TypeError"


async def test_sd_vae_only_on_an_older_server() -> None:
    async with SimServer(fast()) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        assert (await http.get(f"{API}/sd-vae")).status_code == 404
    async with (
        SimServer(fast(sd_vae_route=True)) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        vaes = (await http.get(f"{API}/sd-vae")).json()
    assert [v["model_name"] for v in vaes] == ["ae.safetensors", "sdxl_vae.safetensors"]


# ---- scripts and extensions -----------------------------------------------------------------


async def test_script_lists_and_extension_routes() -> None:
    async with SimServer(fast()) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        listed = (await http.get(f"{API}/scripts")).json()
        models = (await http.get("/controlnet/model_list")).json()
        modules = (await http.get("/controlnet/module_list")).json()
        missing = await http.get("/adetailer/v1/ad_model")
    assert set(listed) == {"txt2img", "img2img"}
    assert "controlnet" in listed["txt2img"] and "adetailer" not in listed["txt2img"]
    assert "x/y/z plot" in listed["txt2img"] and "soft inpainting" in listed["img2img"]
    assert models["model_list"][0] == "None" and len(models["model_list"]) > 1
    assert modules["module_list"][0] == "None" and "canny" in modules["module_list"]
    assert missing.status_code == 404
    config = fast(adetailer=True, controlnet=False, adetailer_models=["face_yolov8n.pt"])
    async with SimServer(config) as srv, httpx.AsyncClient(base_url=srv.url) as http:
        listed = (await http.get(f"{API}/scripts")).json()
        ad_models = (await http.get("/adetailer/v1/ad_model")).json()
        no_controlnet = await http.get("/controlnet/model_list")
    assert "adetailer" in listed["img2img"] and "controlnet" not in listed["img2img"]
    assert ad_models == {"ad_model": ["face_yolov8n.pt"]} and no_controlnet.status_code == 404


async def test_script_faults_forge_refuses() -> None:
    """`init_script_args`: 422 for a missing extension, a selectable script among the always-on
    ones and an unknown script_name; pydantic's 422 for a wrong type; 500 for args Forge
    cannot index."""
    async with SimServer(fast()) as srv, httpx.AsyncClient(base_url=srv.url) as http:

        async def post(body: dict[str, Any]) -> httpx.Response:
            return await http.post(f"{API}/txt2img", json={"steps": 2, **body})

        response = await post({"alwayson_scripts": {"ADetailer": {"args": [{"ad_model": "x"}]}}})
        assert (response.status_code, response.json()) == (
            422,
            {"detail": "always on script ADetailer not found"},
        )
        response = await post({"alwayson_scripts": {"X/Y/Z plot": {"args": []}}})
        assert (response.status_code, response.json()) == (
            422,
            {"detail": "Cannot have a selectable script in the always on scripts params"},
        )
        response = await post({"script_name": "nope"})
        assert (response.status_code, response.json()) == (
            422,
            {"detail": "Script 'nope' not found"},
        )
        response = await post({"alwayson_scripts": ["controlnet"]})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "alwayson_scripts"]
        response = await post({"script_args": "x"})
        assert response.status_code == 422
        response = await post({"alwayson_scripts": {"controlnet": 5}})
        assert response.status_code == 500 and response.json()["error"] == "TypeError"
        response = await post({"alwayson_scripts": {"controlnet": {"args": {"a": 1}}}})
        assert response.status_code == 500 and response.json()["error"] == "KeyError"
        response = await http.post(
            f"{API}/img2img",
            json={
                "init_images": [b64(solid((0, 0, 0)))],
                "alwayson_scripts": {"adetailer": {"args": []}},
            },
        )
        assert response.status_code == 422
        assert srv.sim.generations == []


async def test_controlnet_unit_shapes(served: tuple[SimServer, httpx.AsyncClient]) -> None:
    srv, http = served
    control = b64(solid((255, 255, 255)))
    model = (await http.get("/controlnet/model_list")).json()["model_list"][1]

    async def run(units: list[Any]) -> tuple[dict[str, str], list[str]]:
        response = await http.post(
            f"{API}/txt2img",
            json={"steps": 2, "alwayson_scripts": {"ControlNet": {"args": units}}},
        )
        assert response.status_code == 200, response.text
        text = json.loads(response.json()["info"])["infotexts"][0]
        return parse_infotext(text), srv.sim.generations[-1].extensions

    unit = {"enabled": True, "module": "canny", "model": model, "image": control, "weight": 0.8}
    fields, applied = await run([unit])
    assert applied == ["controlnet"]
    assert fields["ControlNet 0"] == (
        f"Module: canny, Model: {model}, Weight: 0.8, Resize Mode: ResizeMode.INNER_FIT, "
        "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        "Control Mode: ControlMode.BALANCED, Hr Option: HiResFixOption.BOTH"
    )
    # Forge logs what ControlNet itself rejects and generates without it.
    fields, applied = await run([{**unit, "model": "missing [00000000]"}])
    assert applied == [] and "ControlNet 0" in fields  # written before the failure
    fields, applied = await run(["not a unit"])
    assert applied == [] and "ControlNet 0" not in fields
    fields, applied = await run([{**unit, "image": "garbage"}])
    assert applied == []
    fields, applied = await run([{**unit, "image": {"image": control, "mask": None}}])
    assert applied == []  # the old sd-webui-controlnet {"image", "mask"} shape
    fields, applied = await run([{**unit, "enabled": False}])
    assert applied == [] and "ControlNet 0" not in fields


async def test_adetailer_arg_shapes(served: tuple[SimServer, httpx.AsyncClient]) -> None:
    srv, http = served

    async def run(args: list[Any], name: str = "ADetailer") -> tuple[dict[str, str], list[str]]:
        response = await http.post(
            f"{API}/txt2img", json={"steps": 2, "alwayson_scripts": {name: {"args": args}}}
        )
        assert response.status_code == 200, response.text
        text = json.loads(response.json()["info"])["infotexts"][0]
        return parse_infotext(text), srv.sim.generations[-1].extensions

    fields, applied = await run([True, False, {"ad_model": "face_yolov8n.pt"}])
    assert applied == ["adetailer"]
    assert fields["ADetailer model"] == "face_yolov8n.pt"
    assert fields["ADetailer confidence"] == "0.3" and fields["ADetailer version"] == "24.11.1"
    assert "ADetailer prompt" not in fields  # empty: left out, as extra_params does
    fields, applied = await run(
        [{"ad_model": "hand_yolov8n.pt"}, {"ad_model": "face_yolov8n.pt", "ad_prompt": "smile"}],
        name="adetailer",
    )
    assert fields["ADetailer model"] == "hand_yolov8n.pt"
    assert fields["ADetailer model 2nd"] == "face_yolov8n.pt"
    assert fields["ADetailer prompt 2nd"] == "smile"
    # What ADetailer rejects is only logged by Forge: 200, no ADetailer.
    fields, applied = await run([True, False, {"ad_model": "face_yolov8n.pt", "ad_confidence": 5}])
    assert applied == [] and "ADetailer model" not in fields
    fields, applied = await run([True, False, {"ad_model": "face_yolov8n.pt", "bogus": 1}])
    assert applied == [] and "ADetailer model" not in fields
    fields, applied = await run([True, False, {"ad_model": "no_such.pt"}])
    assert applied == [] and fields["ADetailer model"] == "no_such.pt"
    fields, applied = await run([False, False, {"ad_model": "face_yolov8n.pt"}])
    assert applied == [] and "ADetailer model" not in fields


async def test_styles_apply_to_img2img(served: tuple[SimServer, httpx.AsyncClient]) -> None:
    _, http = served
    styles = (await http.get(f"{API}/prompt-styles")).json()
    assert {"name", "prompt", "negative_prompt"} == set(styles[0])
    answer = await img2img(
        http,
        init_images=[b64(solid((5, 5, 5)))],
        prompt="a cat",
        styles=[styles[0]["name"], "no such style"],
    )
    assert answer["info"]["prompt"] == styles[0]["prompt"].replace("{prompt}", "a cat")


def test_cli_flags_for_extensions() -> None:
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    config = config_from_args(parser.parse_args(["--adetailer", "--no-controlnet", "--sd-vae"]))
    assert (config.adetailer, config.controlnet, config.sd_vae_route) == (True, False, True)
    default = config_from_args(parser.parse_args([]))
    assert (default.adetailer, default.controlnet, default.sd_vae_route) == (False, True, False)
