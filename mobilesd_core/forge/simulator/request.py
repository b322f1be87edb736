"""The txt2img, img2img and extras request models, and Forge's error bodies.

Field names, types and defaults follow Forge's `StableDiffusionTxt2ImgProcessingAPI`,
`StableDiffusionImg2ImgProcessingAPI` and `ExtrasBaseRequest` (`modules/api/models.py`); every
processing field is optional there (pydantic 2 lax mode), so `"20"` is a valid `steps` and `"abc"`
a 422. The extras models keep Forge's bounds (`ge`, `le`, `Literal[0, 1]`), which are 422s too.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class SimHTTPError(Exception):
    """An answer other than 200, with Forge's body for it."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def forge_500(error: str, message: str) -> SimHTTPError:
    """What Forge's `_handle_exception` answers for an exception that is not an HTTPException."""
    return SimHTTPError(500, {"error": error, "detail": "", "body": "", "message": message})


def detail_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> SimHTTPError:
    return SimHTTPError(status, {"detail": detail}, headers)


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    distilled_cfg_scale: float | None = 3.5
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_additional_modules: list[Any] | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    hr_cfg: float | None = 1.0
    hr_distilled_cfg: float | None = 3.5
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = []
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = {}
    infotext: str | None = None


# Fields of StableDiffusionProcessingTxt2Img only: not in the img2img model, nor in its echo.
TXT2IMG_ONLY = frozenset(
    {
        "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
        "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
        "hr_additional_modules", "hr_sampler_name", "hr_scheduler", "hr_prompt",
        "hr_negative_prompt", "hr_cfg",
    }
)  # fmt: skip


class Img2ImgRequest(Txt2ImgRequest):
    """`StableDiffusionImg2ImgProcessingAPI`: the txt2img fields (less the hires ones, which
    `TXT2IMG_ONLY` leaves out of the echo and the plan never reads here) and the img2img ones."""

    init_images: list[Any] | None = None
    denoising_strength: float | None = 0.75
    mask: str | None = None
    include_init_images: bool | None = False
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None

    def echo(self) -> dict[str, Any]:
        """`parameters` of the answer (`vars(img2imgreq)`, so `include_init_images` too, its
        `exclude=True` notwithstanding): init images and mask only with `include_init_images`."""
        out = self.model_dump(exclude=set(TXT2IMG_ONLY))
        if not self.include_init_images:
            out["init_images"] = None
            out["mask"] = None
        return out


class ExtrasRequest(BaseModel):
    """`ExtrasBaseRequest` with Forge's bounds."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    codeformer_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    upscaling_resize: float = Field(default=2, gt=0)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData]


def _error_items(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "type": e["type"],
            "loc": ["body", *e["loc"]],
            "msg": e["msg"],
            "input": e.get("input"),
            "url": f"https://errors.pydantic.dev/2.8/v/{e['type']}",  # Forge's pydantic 2.8
        }
        for e in exc.errors(include_url=False)
    ]


def parse_json_body(raw: bytes) -> Any:
    """The body as FastAPI reads it; undecodable JSON is a 422, as there."""
    if not raw:
        raise detail_error(
            422, [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
        )
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        position = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise detail_error(
            422,
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", position],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": reason},
                }
            ],
        ) from None


def parse_txt2img(body: Any) -> Txt2ImgRequest:
    return parse_model(Txt2ImgRequest, body)


def parse_model(model: type[M], body: Any) -> M:
    """A body validated as FastAPI does: any mismatch is a 422 naming the field."""
    try:
        return model.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        raise detail_error(422, _error_items(exc)) from None


def require_object(body: Any) -> dict[str, Any]:
    """For `dict` bodies such as POST /options."""
    if not isinstance(body, dict):
        raise detail_error(
            422,
            [
                {
                    "type": "dict_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary",
                    "input": body,
                }
            ],
        )
    return body
