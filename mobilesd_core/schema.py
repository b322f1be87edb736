"""The one schema for job parameters and server settings.

Every entry point (HTTP API, YAML job files, TUI, CLI) validates through these models, so a field
means the same thing everywhere and a typo is an error everywhere.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails
from ulid import ULID

from .errors import MobileSDError
from .jobs.types import Job, JobSource, JobStatus

TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "processing"})
ALL_STATUSES: tuple[JobStatus, ...] = ("pending", "processing", "completed", "failed", "cancelled")
JOB_SOURCES: tuple[JobSource, ...] = ("tui", "web", "api", "inbox", "cli")

SEED_MAX = 4_294_967_295


class _Strict(BaseModel):
    # strict: a YAML `steps: "20"` or `seed: true` is an error, not a silent conversion.
    model_config = ConfigDict(extra="forbid", strict=True)


class LoraSpec(_Strict):
    """A LoRA applied to the prompt as `<lora:name:weight>`."""

    name: str = Field(min_length=1, max_length=255)
    weight: float = Field(default=1.0, ge=-5, le=5)

    @field_validator("name")
    @classmethod
    def _no_tag_syntax(cls, value: str) -> str:
        if re.search(r"[<>:\n]", value):
            raise ValueError("must be a LoRA name without '<', '>', ':' or line breaks")
        return value.strip()


class HiresParams(_Strict):
    """Forge's hires fix (`enable_hr` and its `hr_*` fields)."""

    upscaler: str = Field(default="Latent", min_length=1)
    scale: float = Field(default=2.0, ge=1, le=4)
    steps: int = Field(default=0, ge=0, le=150)
    denoising_strength: float = Field(default=0.7, ge=0, le=1)


MODEL_NAME_MAX = 512
IMAGE_B64_MAX = 16_000_000  # characters of a base64 control image (about 12 MB of PNG)


class ADetailerUnit(_Strict):
    """One ADetailer pass (a tab of the extension): detect with `model`, then inpaint there."""

    model: str = Field(min_length=1, max_length=MODEL_NAME_MAX)
    prompt: str = Field(default="", max_length=20_000)
    negative_prompt: str = Field(default="", max_length=20_000)
    confidence: float = Field(default=0.3, ge=0, le=1)
    denoising_strength: float = Field(default=0.4, ge=0, le=1)
    mask_blur: int = Field(default=4, ge=0, le=256)
    inpaint_only_masked: bool = True
    inpaint_padding: int = Field(default=32, ge=0, le=1024)

    @field_validator("model")
    @classmethod
    def _not_none(cls, value: str) -> str:
        if value.strip().lower() == "none":
            raise ValueError("must name a detection model (leave the unit out for none)")
        return value.strip()


ControlMode = Literal["Balanced", "My prompt is more important", "ControlNet is more important"]
ResizeMode = Literal["Just Resize", "Crop and Resize", "Resize and Fill"]


class ControlNetUnit(_Strict):
    """One ControlNet unit: a preprocessor (`module`), a control model and its input image."""

    module: str = Field(default="None", min_length=1, max_length=MODEL_NAME_MAX)
    model: str = Field(default="None", min_length=1, max_length=MODEL_NAME_MAX)
    weight: float = Field(default=1.0, ge=0, le=2)
    image: str | None = Field(default=None, min_length=1, max_length=IMAGE_B64_MAX)
    guidance_start: float = Field(default=0.0, ge=0, le=1)
    guidance_end: float = Field(default=1.0, ge=0, le=1)
    control_mode: ControlMode = "Balanced"
    resize_mode: ResizeMode = "Crop and Resize"
    pixel_perfect: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ControlNetUnit:
        if self.guidance_end < self.guidance_start:
            raise ValueError("guidance_end must not be below guidance_start")
        # reference_* preprocessors need no model; everything else does (Forge skips the unit).
        if self.model == "None" and not self.module.startswith("reference"):
            raise ValueError("model is required (only the reference_* modules run without one)")
        return self


# override_settings keys a job field owns, and the field that owns each: a job that sets the
# field and the same key in `extra.override_settings` would lose the latter, so it is refused.
OVERRIDE_OWNERS: dict[str, tuple[str, ...]] = {
    "sd_model_checkpoint": ("checkpoint_name",),
    "CLIP_stop_at_last_layers": ("clip_skip",),
    "forge_additional_modules": ("modules", "checkpoint_name"),
    "sd_vae": ("modules", "checkpoint_name"),
}
# Request keys the payload always sets from the job's fields.
PAYLOAD_KEYS: frozenset[str] = frozenset(
    {
        "prompt",
        "negative_prompt",
        "styles",
        "seed",
        "subseed",
        "subseed_strength",
        "sampler_name",
        "scheduler",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "batch_size",
        "n_iter",
        "send_images",
        "save_images",
        "enable_hr",
    }
)
HIRES_KEYS: frozenset[str] = frozenset(
    {
        "hr_scale",
        "hr_upscaler",
        "hr_second_pass_steps",
        "denoising_strength",
        "hr_cfg",
        "hr_additional_modules",
    }
)
# alwayson_scripts entries the extension blocks own (names match case-insensitively in Forge).
SCRIPT_OWNERS: dict[str, str] = {"adetailer": "adetailer", "controlnet": "controlnet"}


def _is_set(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    return bool(value) if isinstance(value, list) else value is not None


def dropped_extra(extra: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    """What in `extra` the job's own fields (`fields`, by name) would replace when the request
    is built: refused rather than silently dropped."""
    out = []
    owned = set(PAYLOAD_KEYS)
    if fields.get("hires") is not None:
        owned |= HIRES_KEYS
    for name in ("distilled_cfg_scale", "refiner_checkpoint", "refiner_switch_at"):
        if fields.get(name) is not None:
            owned.add(name)
    if any(_is_set(fields, f) for f in ("checkpoint_name", "clip_skip", "modules")):
        owned.add("override_settings_restore_afterwards")
    for key in sorted(owned & set(extra)):
        out.append(f"'{key}' is set from the job's own fields; remove it from extra")
    overrides = extra.get("override_settings")
    if overrides is not None and not isinstance(overrides, dict):
        out.append("override_settings must be an object")
    for key in sorted(overrides) if isinstance(overrides, dict) else []:
        owners = [f for f in OVERRIDE_OWNERS.get(key, ()) if _is_set(fields, f)]
        if owners:
            out.append(
                f"override_settings.{key} would be replaced by the job's {owners[0]}; "
                f"use {OVERRIDE_OWNERS[key][0]} alone"
            )
    scripts = extra.get("alwayson_scripts")
    if scripts is not None and not isinstance(scripts, dict):
        out.append("alwayson_scripts must be an object")
    for key in sorted(scripts) if isinstance(scripts, dict) else []:
        owner = SCRIPT_OWNERS.get(str(key).lower())
        if owner is not None and _is_set(fields, owner):
            out.append(
                f"alwayson_scripts.{key} would be replaced by the job's {owner}; "
                "keep only one of them"
            )
    return out


# --- img2img, inpaint, upscale (issue 19) -------------------------------------------------------

_GALLERY_REF = re.compile(r"^gallery:[^/\\\0]{1,255}$")
_UPLOAD_REF = re.compile(r"^upload:[0-9a-f]{64}$")
_SHA256 = r"^[0-9a-f]{64}$"


def check_image_ref(value: str) -> str:
    """`gallery:<file name>`, `upload:<sha256>`, or a path relative to a job file's folder
    (checked against the inbox when the file is read: jobs/images.py)."""
    if value.startswith("gallery:"):
        if not _GALLERY_REF.fullmatch(value):
            raise ValueError("must be gallery:<file name> (a name, without folders)")
        return value
    if value.startswith("upload:"):
        if not _UPLOAD_REF.fullmatch(value):
            raise ValueError("must be upload:<sha256> (64 lower-case hex digits)")
        return value
    if "\0" in value or value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(
            "must be gallery:<name>, upload:<sha256>, or a path relative to the job file"
        )
    if ".." in re.split(r"[/\\]", value):
        raise ValueError("must not contain '..' (the image must be inside the inbox)")
    return value


class InitImage(_Strict):
    """img2img and inpaint (Forge's `/img2img`): the picture to start from, and a mask.

    `image_sha256` and `mask_sha256` are set by the core when the job is created (the stored
    copy it sends: uploads.py); the sidecar and PNG text keep them beside the names."""

    image: str = Field(min_length=1, max_length=1024)
    image_sha256: str | None = Field(default=None, pattern=_SHA256)
    mask: str | None = Field(default=None, min_length=1, max_length=1024)
    mask_sha256: str | None = Field(default=None, pattern=_SHA256)
    denoising_strength: float = Field(default=0.75, ge=0, le=1)
    resize_mode: int = Field(default=0, ge=0, le=3)
    """0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)."""
    mask_blur: int = Field(default=4, ge=0, le=64)
    inpainting_fill: int = Field(default=1, ge=0, le=3)
    """Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing."""
    inpaint_full_res: bool = False
    """True: "Only masked" (the masked area redone at full resolution)."""
    inpaint_full_res_padding: int = Field(default=32, ge=0, le=256)
    inpainting_mask_invert: bool = False

    @field_validator("image", "mask")
    @classmethod
    def _valid_ref(cls, value: str | None) -> str | None:
        return value if value is None else check_image_ref(value)

    @model_validator(mode="after")
    def _full_res_needs_mask(self) -> InitImage:
        if self.mask is None and (self.inpaint_full_res or self.inpainting_mask_invert):
            raise ValueError("inpaint_full_res and inpainting_mask_invert need a mask")
        return self


class UpscaleParams(_Strict):
    """An upscale job (Forge's `/extra-single-image`): one image through an upscaler."""

    image: str = Field(min_length=1, max_length=1024)
    image_sha256: str | None = Field(default=None, pattern=_SHA256)
    upscaler: str = Field(min_length=1, max_length=128)
    scale: float = Field(default=2.0, ge=1, le=8)

    @field_validator("image")
    @classmethod
    def _valid_ref(cls, value: str) -> str:
        return check_image_ref(value)


class GenerationParams(_Strict):
    """What to generate. Names follow Forge's txt2img fields (see docs/forge-api.md)."""

    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str = Field(default="", max_length=20_000)
    checkpoint_name: str | None = Field(default=None, min_length=1, max_length=512)
    loras: list[LoraSpec] = Field(default_factory=list, max_length=32)
    seed: int = Field(default=-1, ge=-1, le=SEED_MAX)
    subseed: int = Field(default=-1, ge=-1, le=SEED_MAX)
    subseed_strength: float = Field(default=0.0, ge=0, le=1)
    width: int = Field(default=512, ge=64, le=4096)
    height: int = Field(default=512, ge=64, le=4096)
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=0, le=30)
    distilled_cfg_scale: float | None = Field(default=None, ge=0, le=30)
    sampler_name: str = Field(default="Euler", min_length=1, max_length=128)
    scheduler: str | None = Field(default=None, min_length=1, max_length=128)
    batch_size: int = Field(default=1, ge=1, le=8)
    n_iter: int = Field(default=1, ge=1, le=100)
    styles: list[str] = Field(default_factory=list, max_length=32)
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    hires: HiresParams | None = None
    modules: list[str] = Field(default_factory=list, max_length=8)
    """VAE and text encoders (Forge's `forge_additional_modules`) by file name."""
    refiner_checkpoint: str | None = Field(default=None, min_length=1, max_length=512)
    refiner_switch_at: float | None = Field(default=None, gt=0, lt=1)
    adetailer: list[ADetailerUnit] | None = Field(default=None, min_length=1, max_length=4)
    controlnet: list[ControlNetUnit] | None = Field(default=None, min_length=1, max_length=3)
    # img2img/inpaint and upscale jobs (issue 19): after `hires`, which their checks read.
    init: InitImage | None = None
    upscale: UpscaleParams | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("init")
    @classmethod
    def _init_not_hires(cls, value: InitImage | None, info: ValidationInfo) -> InitImage | None:
        if value is not None and info.data.get("hires") is not None:
            raise ValueError("cannot be combined with hires (the hires fix is txt2img's)")
        return value

    @field_validator("upscale")
    @classmethod
    def _upscale_alone(
        cls, value: UpscaleParams | None, info: ValidationInfo
    ) -> UpscaleParams | None:
        if value is None:
            return value
        if info.data.get("init") is not None:
            raise ValueError("cannot be combined with init (an upscale job has one image)")
        if info.data.get("hires") is not None:
            raise ValueError("cannot be combined with hires (an upscale job generates nothing)")
        return value

    @property
    def kind(self) -> str:
        """txt2img, img2img (init without mask), inpaint (init with mask) or upscale."""
        if self.upscale is not None:
            return "upscale"
        if self.init is not None:
            return "inpaint" if self.init.mask is not None else "img2img"
        return "txt2img"

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (nearest: {round(value / 8) * 8})")
        return value

    @field_validator("modules")
    @classmethod
    def _module_file_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.strip() or len(name) > 255:
                raise ValueError("each module must be a file name of 1-255 characters")
            if "/" in name or "\\" in name:
                raise ValueError(
                    f"'{name}' is a path; give the file name as /sdapi/v1/sd-modules lists it "
                    "(e.g. 'ae.safetensors')"
                )
        if len(set(value)) != len(value):
            raise ValueError("lists a module twice")
        return value

    @field_validator("extra")
    @classmethod
    def _nothing_dropped(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # `extra` is the last field: every other one is in info.data (when it was valid).
        problems = dropped_extra(value, info.data)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("refiner_switch_at")
    @classmethod
    def _refiner_pair(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("refiner_checkpoint") is None:
            raise ValueError("needs refiner_checkpoint (the model to switch to)")
        return value

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter


_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_alias(value: str) -> str:
    if not _ALIAS_RE.fullmatch(value):
        raise ValueError(
            "must be 1-64 characters (letters, digits, '_', '-', '.'), "
            "starting with a letter or digit"
        )
    return value


def _check_api_url(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL such as http://192.168.1.20:7860")
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and error messages; they belong in username/password.
        raise ValueError(
            "must not contain a user name or password; use the username/password fields"
        )
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query or fragment")
    if parts.path.rstrip("/").endswith("/sdapi/v1"):
        raise ValueError("is the server root (without /sdapi/v1), e.g. http://192.168.1.20:7860")
    try:
        httpx.URL(value)  # what the Forge client will make of it (IDNA host names, ports)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    return value


def _check_sync_dir(value: str | None) -> str | None:
    """An absolute, plain path (no '..', no NUL), normalised. Whether it is a writable folder is
    checked when the API sets it (model_sync.check_dirs), not here: a share that is not mounted
    at start must not make the stored server unreadable."""
    if value is None:
        return None
    if "\0" in value or not value.strip():
        raise ValueError("must be an absolute folder path")
    if not value.startswith("/"):
        raise ValueError("must be an absolute path (starting with '/'), not a relative one")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return posixpath.normpath(value)


class ServerConfig(_Strict):
    """A Forge server as stored. `password` never leaves the core."""

    alias: str
    api_url: str
    username: str | None = Field(default=None, max_length=256)
    password: SecretStr | None = None
    enabled: bool = True
    max_concurrent: int = Field(default=1, ge=1, le=16)
    # Model sync (see model_sync/): folders this core can write that Forge reads its models from.
    checkpoint_dir: str | None = Field(default=None, max_length=4096)
    lora_dir: str | None = Field(default=None, max_length=4096)
    sync_cap_gb: float | None = Field(default=None, gt=0, le=1_000_000)

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: str) -> str:
        return _check_alias(value)

    @field_validator("api_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return _check_api_url(value)

    @field_validator("checkpoint_dir", "lora_dir")
    @classmethod
    def _valid_dir(cls, value: str | None) -> str | None:
        return _check_sync_dir(value)

    @model_validator(mode="after")
    def _password_needs_user(self) -> ServerConfig:
        if self.password is not None and self.password.get_secret_value() and not self.username:
            raise ValueError("password given without username")
        return self

    def public(self) -> dict[str, Any]:
        """The shape clients see: no password, only whether one is set."""
        data = self.model_dump(exclude={"password"})
        data["has_password"] = bool(self.password and self.password.get_secret_value())
        return data

    def stored(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"password"})
        data["password"] = self.password.get_secret_value() if self.password else None
        return data


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # a null default of a field whose schema does not allow null


class ServerUpdate(_Strict):
    """A partial change of a server; absent fields keep their value."""

    # None: absent. An explicit null is refused (422) for these, so the schema does not offer it.
    alias: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    api_url: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    username: str | None = Field(default=None, max_length=256)
    password: SecretStr | None = None
    enabled: bool | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    max_concurrent: Annotated[int, Field(ge=1, le=16)] | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )
    # null clears them (sync off); absent keeps them.
    checkpoint_dir: str | None = Field(default=None, max_length=4096)
    lora_dir: str | None = Field(default=None, max_length=4096)
    sync_cap_gb: float | None = Field(default=None, gt=0, le=1_000_000)

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: str | None) -> str | None:
        return value if value is None else _check_alias(value)

    @field_validator("api_url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return value if value is None else _check_api_url(value)

    @field_validator("checkpoint_dir", "lora_dir")
    @classmethod
    def _valid_dir(cls, value: str | None) -> str | None:
        return _check_sync_dir(value)


WEBHOOK_URL_MAX = 2048
# Job fields that say where news of a job goes, not how to make its images. They stay on the job
# record (the API shows them to the token holder) and never reach the gallery: sidecars, PNG
# text, zips. A webhook URL often carries its receiver's key.
DELIVERY_FIELDS: frozenset[str] = frozenset({"webhook_url"})


def check_webhook_url(value: object) -> str:
    """A webhook URL: http(s), with a host, no spaces. (Query strings are allowed: receivers
    often take their key there.)"""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if len(value) > WEBHOOK_URL_MAX:
        raise ValueError(f"must be at most {WEBHOOK_URL_MAX} characters")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or any(c.isspace() for c in value)
    ):
        raise ValueError("must be an http:// or https:// URL such as https://example.net/hook")
    return value


class GenerateRequest(_Strict):
    """Body of POST /api/v1/generate."""

    target_server_alias: str | None = None
    generation_params: GenerationParams
    webhook_url: str | None = Field(default=None, max_length=WEBHOOK_URL_MAX)

    @field_validator("webhook_url")
    @classmethod
    def _valid_webhook(cls, value: str | None) -> str | None:
        return value if value is None else check_webhook_url(value)


# --- jobs -------------------------------------------------------------------------------------


def new_job_id() -> str:
    return str(ULID())


def new_batch_id() -> str:
    """Jobs created together (one request, one job file) share one; sortable like job ids."""
    return "b" + str(ULID())


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job(
    params: GenerationParams,
    *,
    source: JobSource,
    target_server_alias: str | None = None,
    source_ref: str | None = None,
    position: int = 0,
    batch_id: str | None = None,
) -> Job:
    """A fresh pending job record, in the shape the API serves (the job's other fields are
    written by its transitions: jobs/transitions.py)."""
    return {
        "mobilesd_job_id": new_job_id(),
        "batch_id": batch_id or new_batch_id(),
        "status": "pending",
        "creation_timestamp": utc_now_iso(),
        "started_timestamp": None,
        "completion_timestamp": None,
        "target_server_alias": target_server_alias,
        "assigned_server_alias": None,
        "source": source,
        "source_ref": source_ref,
        "position": position,
        "attempts": 0,
        "progress": None,
        "generation_params": params.model_dump(mode="json"),
        "result_details": None,
    }


# --- problems as values -----------------------------------------------------------------------


class FieldProblem(BaseModel):
    """One thing wrong with an input: where, what was found, what is expected."""

    path: str
    message: str
    line: int | None = None

    def render(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top level)'}: {self.message}"

    def render_in(self, filename: str) -> str:
        """Compiler style, `file:line: field: message`, as editors and terminals link it."""
        line = f":{self.line}" if self.line else ""
        return f"{filename}{line}: {self.path or '(file)'}: {self.message}"


def format_loc(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that holds the last element of `loc`, for did-you-mean hints."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = None
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            inner = getattr(candidate, "__args__", None)
            for c in inner or (candidate,):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _describe(err: ErrorDetails, model: type[BaseModel] | None) -> str:
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    found = err.get("input")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(name, _known_fields(model, loc), n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{close[0]}'?"
        return f"unknown field{hint}"
    if kind == "missing":
        return "is required"
    message = str(err.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    if kind not in ("value_error",) and found is not None and not isinstance(found, dict | list):
        shown = repr(found)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = f"{message} (found {shown})"
    return message


def problems_from_error(
    error: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None
) -> list[FieldProblem]:
    """Turn pydantic's error into one FieldProblem per field, paths like `loras[0].weight`."""
    problems = []
    for err in error.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        problems.append(FieldProblem(path=format_loc(loc, prefix), message=_describe(err, model)))
    return problems


class InvalidInput(MobileSDError):
    """Raised by services when input fails validation; carries every problem found."""

    status = 422
    code = "invalid_fields"

    def __init__(self, problems: list[FieldProblem], message: str = "invalid input") -> None:
        super().__init__(message)
        self.problems = problems
        self.message = message

    @property
    def public_message(self) -> str:
        return f"invalid fields: {'; '.join(p.render() for p in self.problems[:5])}"

    @property
    def details(self) -> Any:
        return [p.model_dump(exclude_none=True) for p in self.problems]


def parse_params(data: Any, *, prefix: str = "generation_params") -> GenerationParams:
    """Validate raw data into GenerationParams or raise InvalidInput naming each field."""
    if not isinstance(data, dict):
        raise InvalidInput([FieldProblem(path=prefix, message="must be an object")])
    try:
        return GenerationParams.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(
            problems_from_error(exc, prefix=prefix, model=GenerationParams)
        ) from None
