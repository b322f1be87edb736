"""Settings of one simulated Forge server."""

from __future__ import annotations

from dataclasses import dataclass, field

from .scripts import DEFAULT_ADETAILER_MODELS, DEFAULT_CONTROLNET_MODELS, DEFAULT_CONTROLNET_MODULES

DEFAULT_CHECKPOINTS = [
    "sd15/dreamshaper_8.safetensors",
    "sdxl/juggernautXL_v9.safetensors",
    "flux/flux1-dev-fp8.safetensors",
]
DEFAULT_LORAS = ["add_detail", "film_grain", "pixel_art"]

# A sentinel, because `None` is a meaningful value (no never-hashed model at all).
LAST_CHECKPOINT = "<last checkpoint>"

FORGE_VERSION = "f2.0.1v1.10.1-previous-669-gdfdcbab6"


@dataclass
class SimulatorConfig:
    """What the simulated server offers and how slow it is."""

    checkpoints: list[str] = field(default_factory=lambda: list(DEFAULT_CHECKPOINTS))
    """Checkpoint paths under `models/Stable-diffusion`, always written with `/`."""
    loras: list[str] = field(default_factory=lambda: list(DEFAULT_LORAS))
    """LoRA names (file stems)."""
    step_ms: float = 40.0
    """Time per sampling step."""
    switch_ms: float = 800.0
    """Time to load another checkpoint."""
    auth: tuple[str, str] | None = None
    """HTTP Basic user and password, as `--api-auth user:pass`."""
    os_sep: str = "/"
    """Separator in titles: `\\` mimics a Windows server."""
    unhashed: str | None = LAST_CHECKPOINT
    """One checkpoint never hashed yet: its title has no ` [hash]` until it is first loaded."""
    initial_checkpoint: str | None = None
    """Checkpoint loaded at boot; None means the first one."""
    preview_every_n_steps: int = 10
    """`show_progress_every_n_steps`: -1 previews only between batches."""
    name: str = "sim"
    """Shown in the version string and the logs."""
    seed_for_hashes: str = ""
    """Salt for the derived hashes; two simulators with different salts disagree on hashes."""
    webui: bool = False
    """Also serve `/internal/*`, like Forge started with its web UI (not `--nowebui`)."""
    models_dir: str | None = None
    """A real folder standing for `models/Stable-diffusion`: its model files are listed besides
    `checkpoints`, read at boot and again only on `/refresh-checkpoints` (as Forge does)."""
    lora_dir: str | None = None
    """A real folder standing for `models/Lora`: its files' stems join `loras`, read at boot and
    again only on `/refresh-loras`."""
    vae_dir: str | None = None
    """A real folder standing for `--vae-dir`: its model files are `/sd-modules` (as Forge lists
    `models/VAE` and `models/text_encoder`) instead of the built-in example list."""
    styles_files: list[str] = field(default_factory=list)
    """Styles CSVs (`name,prompt,negative_prompt`), as Forge's `--styles-file` (repeatable):
    their rows are the styles instead of the built-in ones; with more than one, each file's rows
    follow a divider entry named after it (Forge's default is two files, so dividers are usual)."""

    controlnet: bool = True
    """The built-in ControlNet (Forge ships it): the `controlnet` script and `/controlnet/*`."""
    controlnet_models: list[str] = field(default_factory=lambda: list(DEFAULT_CONTROLNET_MODELS))
    """`/controlnet/model_list` (after its leading "None"): `name [8-hex hash]` as Forge lists."""
    controlnet_modules: list[str] = field(default_factory=lambda: list(DEFAULT_CONTROLNET_MODULES))
    """`/controlnet/module_list`: the preprocessors."""
    adetailer: bool = False
    """ADetailer installed: the `adetailer` script and `/adetailer/v1/*`."""
    adetailer_models: list[str] = field(default_factory=lambda: list(DEFAULT_ADETAILER_MODELS))
    """`/adetailer/v1/ad_model`."""
    upscalers: list[str] | None = None
    """Names `/upscalers` lists (a server without some upscaler models); None: all of them."""
    sd_vae_route: bool = False
    """Also serve A1111's `/sdapi/v1/sd-vae` (Forge has only `/sd-modules`): an older server."""

    def __post_init__(self) -> None:
        if self.unhashed == LAST_CHECKPOINT:
            self.unhashed = self.checkpoints[-1] if self.checkpoints else None
        if self.os_sep not in ("/", "\\"):
            raise ValueError(f"os_sep must be '/' or '\\\\', not {self.os_sep!r}")

    @property
    def version(self) -> str:
        return f"{FORGE_VERSION}-{self.name}"
