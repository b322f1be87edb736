"""JSON Schemas generated from the pydantic models: the job file schema, and the model schemas the
OpenAPI document shares.

Pydantic's own schema misses the rules its validators add (width a multiple of 8, a prompt that is
not blank, the alias pattern, ...); `model_schemas` adds them, and fails loudly when a field it
refers to no longer exists, so the copy cannot drift from the models silently.

The job file schema is committed at `schemas/mobilesd-job.schema.json` (a test checks it equals what
this module generates). To write it again after a change to the models:

    python -m mobilesd_core.jobfile_schema            # writes schemas/mobilesd-job.schema.json
    python -m mobilesd_core.jobfile_schema --check    # exit 1 when the committed file is stale

YAML editors (VS Code's YAML extension, anything using yaml-language-server) pick it up from a first
line such as

    # yaml-language-server: $schema=../../schemas/mobilesd-job.schema.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .jobfiles import MAX_JOBS
from .prompt_variants import MAX_VARIANTS
from .schema import (
    _ALIAS_RE,
    FieldProblem,
    GenerateRequest,
    GenerationParams,
    HiresParams,
    InitImage,
    LoraSpec,
    ServerConfig,
    ServerUpdate,
    UpscaleParams,
)

JSONSchema = dict[str, Any]
# The models nested in a job's fields, each a definition of the job-file schema.
JOB_MODELS = ("LoraSpec", "HiresParams", "InitImage", "UpscaleParams")

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "mobilesd-job.schema.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"

MODELS: tuple[type[BaseModel], ...] = (
    GenerationParams,
    LoraSpec,
    HiresParams,
    InitImage,
    UpscaleParams,
    GenerateRequest,
    ServerConfig,
    ServerUpdate,
    FieldProblem,
)

# Rules the models enforce in validators, which pydantic cannot put in a schema itself.
# (model, field) -> keywords added to the field's schema (to its non-null branch when nullable).
_URL_PATTERN = r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+"
VALIDATOR_RULES: dict[tuple[str, str], JSONSchema] = {
    ("GenerationParams", "prompt"): {"pattern": r"\S"},
    ("GenerationParams", "width"): {"multipleOf": 8},
    ("GenerationParams", "height"): {"multipleOf": 8},
    ("LoraSpec", "name"): {"pattern": r"^[^<>:\n]*$"},
    ("ServerConfig", "alias"): {"pattern": _ALIAS_RE.pattern},
    ("ServerUpdate", "alias"): {"pattern": _ALIAS_RE.pattern},
    ("ServerConfig", "api_url"): {"pattern": _URL_PATTERN, "format": "uri"},
    ("GenerateRequest", "webhook_url"): {"pattern": _URL_PATTERN, "format": "uri"},
    ("ServerUpdate", "api_url"): {"pattern": _URL_PATTERN, "format": "uri"},
}

_IMAGE_REF = (
    "gallery:<file name> (a gallery image), upload:<sha256> (POST /api/v1/uploads), or in a job "
    "file a path relative to the file's folder, inside the inbox. Copied when the job is created."
)

# Field descriptions (each field's rule). Kept here rather than in schema.py; every key must name
# an existing field, or generating fails.
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("GenerationParams", "prompt"): "What to generate. Must not be blank.",
    ("GenerationParams", "negative_prompt"): "What to avoid.",
    ("GenerationParams", "checkpoint_name"): (
        "Checkpoint to use, matched against the server's model list (file name, relative path "
        "or title). null keeps the server's current checkpoint."
    ),
    ("GenerationParams", "loras"): "LoRAs added to the prompt as <lora:name:weight>.",
    ("GenerationParams", "seed"): "-1 for a random seed, else 0..4294967295.",
    ("GenerationParams", "subseed"): "Variation seed; -1 for random.",
    ("GenerationParams", "subseed_strength"): "How much the variation seed changes the image.",
    ("GenerationParams", "width"): "Image width in pixels: 64..4096, a multiple of 8.",
    ("GenerationParams", "height"): "Image height in pixels: 64..4096, a multiple of 8.",
    ("GenerationParams", "steps"): "Sampling steps, 1..150.",
    ("GenerationParams", "cfg_scale"): "Classifier-free guidance scale, 0..30.",
    ("GenerationParams", "distilled_cfg_scale"): "Distilled CFG scale (Forge, Flux models only).",
    ("GenerationParams", "sampler_name"): "Sampler, checked against the server's samplers.",
    ("GenerationParams", "scheduler"): (
        "Scheduler, checked against the server's schedulers when it has any; null: the default."
    ),
    ("GenerationParams", "batch_size"): "Images per batch, 1..8.",
    ("GenerationParams", "n_iter"): "Number of batches, 1..100.",
    ("GenerationParams", "clip_skip"): "CLIP skip, 1..12; null: the server's setting.",
    ("GenerationParams", "hires"): "Hires fix (Forge's enable_hr fields); null: off.",
    ("GenerationParams", "styles"): (
        "Forge style presets, by name; checked against the server's /sdapi/v1/prompt-styles."
    ),
    ("GenerationParams", "modules"): (
        "VAE and text encoders (Forge's forge_additional_modules; A1111: one VAE) by file name "
        "as /sdapi/v1/sd-modules lists it, e.g. ae.safetensors. Jobs go only to servers that "
        "have them."
    ),
    ("GenerationParams", "refiner_checkpoint"): (
        "Checkpoint to switch to for the last steps, matched like checkpoint_name."
    ),
    ("GenerationParams", "refiner_switch_at"): (
        "Fraction of the steps after which the refiner takes over, 0..1 (exclusive); default 0.8."
    ),
    ("GenerationParams", "adetailer"): (
        "ADetailer passes (the extension must be installed on the server), one per tab, 1..4."
    ),
    ("GenerationParams", "controlnet"): ("ControlNet units (Forge's built-in ControlNet), 1..3."),
    ("GenerationParams", "extra"): (
        "Passed into Forge's txt2img payload: anything else Forge accepts. The only place where "
        "unknown keys are allowed. override_settings and alwayson_scripts are merged with the "
        "job's own; a key the job's fields set is refused."
    ),
    ("ADetailerUnit", "model"): "Detection model as /adetailer/v1/ad_model lists it.",
    ("ADetailerUnit", "prompt"): "Inpainting prompt; empty: the job's prompt.",
    ("ADetailerUnit", "negative_prompt"): "Inpainting negative prompt; empty: the job's.",
    ("ADetailerUnit", "confidence"): "Detection confidence threshold, 0..1.",
    ("ADetailerUnit", "denoising_strength"): "Inpainting denoising strength, 0..1.",
    ("ADetailerUnit", "mask_blur"): "Mask blur in pixels.",
    ("ADetailerUnit", "inpaint_only_masked"): "Inpaint only the detected area.",
    ("ADetailerUnit", "inpaint_padding"): "Padding around the detected area, in pixels.",
    ("ControlNetUnit", "module"): (
        "Preprocessor as /controlnet/module_list lists it; 'None' for a ready control image."
    ),
    ("ControlNetUnit", "model"): (
        "Control model as /controlnet/model_list lists it (with its [hash]); only the "
        "reference_* modules run without one."
    ),
    ("ControlNetUnit", "weight"): "Control weight, 0..2.",
    ("ControlNetUnit", "image"): "Control image, base64 (PNG or JPEG).",
    ("ControlNetUnit", "guidance_start"): "Fraction of the steps where control starts, 0..1.",
    ("ControlNetUnit", "guidance_end"): "Fraction of the steps where control ends, 0..1.",
    ("ControlNetUnit", "control_mode"): "Balance between the prompt and the control.",
    ("ControlNetUnit", "resize_mode"): "How the control image is fitted to the picture.",
    ("ControlNetUnit", "pixel_perfect"): "Let ControlNet pick the preprocessor resolution.",
    # img2img, inpaint and upscale (issue 19)
    ("GenerationParams", "init"): (
        "img2img (Forge's /img2img): the picture to start from, and a mask to inpaint; null: "
        "txt2img. Not with hires."
    ),
    ("GenerationParams", "upscale"): (
        "An upscale job (Forge's Extras) instead of a generation; the prompt is its label. Not "
        "with init or hires."
    ),
    ("InitImage", "image"): _IMAGE_REF,
    ("InitImage", "image_sha256"): "Set by the core: the SHA-256 of the stored copy.",
    ("InitImage", "mask"): (
        "The inpaint mask (white: repaint), the image's size; a reference like image. null: "
        "plain img2img."
    ),
    ("InitImage", "mask_sha256"): "Set by the core: the SHA-256 of the stored mask.",
    ("InitImage", "denoising_strength"): "How much the picture changes, 0..1.",
    ("InitImage", "resize_mode"): (
        "0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale)."
    ),
    ("InitImage", "mask_blur"): "Mask blur in pixels, 0..64.",
    ("InitImage", "inpainting_fill"): (
        "Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing."
    ),
    ("InitImage", "inpaint_full_res"): (
        "true: only the masked area is redone, at full resolution (Forge's 'Only masked')."
    ),
    ("InitImage", "inpaint_full_res_padding"): "Pixels around the masked area, 0..256.",
    ("InitImage", "inpainting_mask_invert"): "true: repaint what the mask leaves black.",
    ("UpscaleParams", "image"): _IMAGE_REF,
    ("UpscaleParams", "image_sha256"): "Set by the core: the SHA-256 of the stored copy.",
    ("UpscaleParams", "upscaler"): "Upscaler name, checked against the server's /upscalers.",
    ("UpscaleParams", "scale"): "Upscale factor, 1..8.",
    ("LoraSpec", "name"): "LoRA name as the server lists it, without <, >, : or line breaks.",
    ("LoraSpec", "weight"): "Weight, -5..5.",
    ("HiresParams", "upscaler"): "Forge's hr_upscaler.",
    ("HiresParams", "scale"): "Forge's hr_scale, 1..4.",
    ("HiresParams", "steps"): "Forge's hr_second_pass_steps; 0: as many as the first pass.",
    ("HiresParams", "denoising_strength"): "Denoising strength of the second pass, 0..1.",
    ("GenerateRequest", "target_server_alias"): (
        "Alias of the server that must run the job; absent or null: any enabled server."
    ),
    ("GenerateRequest", "webhook_url"): (
        "http(s) URL told about every job the request creates: each terminal state (completed, "
        "failed, cancelled) is POSTed there as the job's JSON, signed with the header "
        "X-MobileSD-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with WEBHOOK_SECRET>, "
        "and retried with backoff until a 2xx answer."
    ),
    ("ServerConfig", "alias"): "Short name, 1-64 letters, digits, '_', '-', '.'.",
    ("ServerConfig", "api_url"): (
        "Forge's root URL (without /sdapi/v1), e.g. http://192.168.1.20:7860. No credentials, "
        "query or fragment."
    ),
    ("ServerConfig", "username"): "HTTP basic auth user of Forge's --api-auth.",
    ("ServerConfig", "password"): (
        "HTTP basic auth password; needs a username. Never returned (has_password instead)."
    ),
    ("ServerConfig", "enabled"): "Disabled servers take no jobs.",
    ("ServerConfig", "max_concurrent"): "Jobs sent to this server at once, 1..16.",
    ("ServerConfig", "checkpoint_dir"): (
        "Model sync: absolute path of a folder the core can write that Forge reads checkpoints "
        "from (its models/Stable-diffusion, or a folder inside it). A job whose checkpoint is "
        "only in CHECKPOINT_PATH gets it copied here first. null: no sync."
    ),
    ("ServerConfig", "lora_dir"): (
        "Model sync: absolute path of a folder the core can write that Forge reads LoRAs from "
        "(its models/Lora). null: no sync."
    ),
    ("ServerConfig", "sync_cap_gb"): (
        "Model sync: the most GB (10^9 bytes) of copies the core keeps on this server; least "
        "recently used copies are deleted first. null: MODEL_SYNC_CAP_GB, else no cap."
    ),
    ("FieldProblem", "path"): "The field, e.g. generation_params.loras[0].weight.",
    ("FieldProblem", "message"): "What is wrong and what is expected.",
    ("FieldProblem", "line"): "Line number in a job file, when the input was one.",
}

SERVER_DESCRIPTION = (
    "Alias of the server that must run the job(s); absent: any enabled server. Not a "
    "generation_params field: the API's equivalent is target_server_alias."
)


def _field_schema(schemas: dict[str, JSONSchema], model: str, field: str) -> JSONSchema:
    try:
        return schemas[model]["properties"][field]
    except KeyError:
        raise KeyError(
            f"{model}.{field} is not a field any more; update jobfile_schema.py"
        ) from None


def _value_branch(prop: JSONSchema) -> JSONSchema:
    """The non-null branch of `anyOf: [X, null]`, or the schema itself."""
    branches = [b for b in prop.get("anyOf", ()) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else prop


def _fix_ref_siblings(node: Any) -> Any:
    """Draft-07 ignores keywords beside `$ref`: wrap such refs in allOf so they keep counting."""
    if isinstance(node, dict):
        node = {k: _fix_ref_siblings(v) for k, v in node.items()}
        if "$ref" in node and len(node) > 1:
            ref = node.pop("$ref")
            node["allOf"] = [{"$ref": ref}]
        return node
    if isinstance(node, list):
        return [_fix_ref_siblings(v) for v in node]
    return node


def model_schemas(ref_template: str) -> dict[str, JSONSchema]:
    """JSON Schemas of MODELS (and the models they use), by model name, validation mode, with
    VALIDATOR_RULES and DESCRIPTIONS applied; references to each other follow `ref_template`."""
    _, top = models_json_schema([(m, "validation") for m in MODELS], ref_template=ref_template)
    schemas: dict[str, JSONSchema] = copy.deepcopy(top["$defs"])
    for (model, field), rule in VALIDATOR_RULES.items():
        _value_branch(_field_schema(schemas, model, field)).update(rule)
    for (model, field), text in DESCRIPTIONS.items():
        _field_schema(schemas, model, field)["description"] = text
    for (model, field), text in DESCRIPTIONS.items():
        # ServerUpdate shares ServerConfig's meanings; absent fields keep their value.
        if model == "ServerConfig" and field in schemas["ServerUpdate"]["properties"]:
            schemas["ServerUpdate"]["properties"][field].setdefault("description", text)
    return schemas


# --- the job file schema ----------------------------------------------------------------------


def expand_schema() -> JSONSchema:
    """`expand`: how a prompt template becomes jobs (prompt_variants.parse_expand's rules)."""
    mode = {"type": "string", "enum": ["combinatorial", "random"]}
    return {
        "description": (
            "Expand the prompt as a dynamicprompts template (`{red|green}`, `__wildcard__` from "
            "WILDCARDS_PATH) into one job per prompt: every combination, or `count` seeded random "
            "picks (seed: `seed`, else the job's seed). Without it a prompt is taken literally. "
            f"At most {MAX_VARIANTS} prompts per template."
        ),
        "anyOf": [
            {"type": "null"},
            mode,
            {
                "type": "object",
                "properties": {
                    "mode": mode,
                    "count": {"type": "integer", "minimum": 1, "maximum": MAX_VARIANTS},
                    # null: the job's seed, as when absent
                    "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 4_294_967_295},
                },
                "required": ["mode"],
                "additionalProperties": False,
                # Combinatorial makes every combination: a count would be ignored, so refused.
                "if": {"properties": {"mode": {"const": "combinatorial"}}},
                "then": {"not": {"required": ["count"]}},
            },
        ],
    }


def _ref(name: str) -> JSONSchema:
    return {"$ref": f"#/definitions/{name}"}


def _field_ref(name: str) -> JSONSchema:
    return {"$ref": f"#/definitions/JobFields/properties/{name}"}


def job_file_schema() -> JSONSchema:
    """The JSON Schema (draft-07, which YAML editors support) of a MobileSD job file."""
    models = model_schemas("#/definitions/{model}")
    params = models["GenerationParams"]
    fields = list(params["properties"])
    job_fields: JSONSchema = {
        "title": "Job fields",
        "description": (
            "The generation_params fields plus `server` and `expand`; unknown keys are an error "
            "(except inside `extra`)."
        ),
        "type": "object",
        "properties": {
            **params["properties"],
            "server": {
                "anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}],
                "description": SERVER_DESCRIPTION,
            },
            "expand": expand_schema(),
        },
        "additionalProperties": False,
    }
    job_keys = [*fields, "server", "expand"]
    matrix_axes = {
        key: {
            "type": "array",
            "minItems": 1,
            "items": _field_ref(key),
            "description": f"Values of `{key}`, one job per value (times the other axes).",
        }
        for key in job_keys
    }
    definitions: dict[str, JSONSchema] = {
        "Job": {
            "title": "One job",
            "description": "A mapping of job fields; `prompt` is required.",
            "allOf": [_ref("JobFields")],
            "required": ["prompt"],
        },
        "JobList": {
            "title": "A list of jobs",
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_JOBS,
            "items": _ref("Job"),
        },
        "DefaultsAndJobs": {
            "title": "Defaults + jobs",
            "description": (
                "Each job is `defaults` overridden by its own fields; every job needs a prompt, "
                "from the defaults or its own."
            ),
            "type": "object",
            "properties": {
                "defaults": {
                    "anyOf": [_ref("JobFields"), {"type": "null"}],
                    "description": "Fields every job starts from.",
                },
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_JOBS,
                    "items": _ref("JobFields"),
                    "description": "The jobs; each may override any default.",
                },
            },
            "required": ["jobs"],
            "additionalProperties": False,
            "anyOf": [
                {
                    "required": ["defaults"],
                    "properties": {"defaults": {"type": "object", "required": ["prompt"]}},
                },
                {"properties": {"jobs": {"items": {"required": ["prompt"]}}}},
            ],
        },
        "Sweep": {
            "title": "A sweep (matrix)",
            "description": (
                "One job per combination of the matrix values (at most "
                f"{MAX_JOBS}). A matrix key that is a job field sets that field; any other key "
                "is a {placeholder} replaced in every string value."
            ),
            "type": "object",
            "properties": {
                **{key: _field_ref(key) for key in job_keys},
                "matrix": {
                    "type": "object",
                    "minProperties": 1,
                    "properties": matrix_axes,
                    "additionalProperties": {
                        "type": "array",
                        "minItems": 1,
                        "description": "Placeholder values, used as {name} in strings.",
                    },
                },
            },
            "required": ["matrix"],
            "additionalProperties": False,
            "anyOf": [
                {"required": ["prompt"]},
                {"properties": {"matrix": {"required": ["prompt"]}}},
            ],
        },
        "JobFields": job_fields,
        **{name: s for name, s in models.items() if name in JOB_MODELS},
    }
    schema: JSONSchema = {
        "$schema": DRAFT_07,
        "title": "MobileSD job file",
        "description": (
            "A YAML job file for MobileSD's inbox or `mobilesd submit`: one job, a list of jobs, "
            "defaults + jobs, or a matrix sweep. Generated from the core's models by "
            "mobilesd_core/jobfile_schema.py; do not edit by hand."
        ),
        "anyOf": [_ref("Job"), _ref("JobList"), _ref("DefaultsAndJobs"), _ref("Sweep")],
        "definitions": definitions,
    }
    return _fix_ref_siblings(schema)


def render(schema: JSONSchema) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    target = Path(paths[0]) if paths else SCHEMA_FILE
    text = render(job_file_schema())
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{target} is out of date; run: python -m mobilesd_core.jobfile_schema")
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
