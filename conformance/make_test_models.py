"""Write small-to-run test models for a real Forge: two SD 1.5 checkpoints, a LoRA and a VAE.

The weights are random (seeded), so nothing is downloaded and each checkpoint has its own hash;
the architecture and the key layout are exactly SD 1.5's single-file layout, which Forge's
loader recognises (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`).

Run with the Python of Forge's own venv (it has torch, diffusers, transformers, safetensors):

    $FORGE_VENV/bin/python conformance/make_test_models.py --forge-dir $FORGE_DIR --out DIR

The component configurations come from Forge's checkout (`backend/huggingface/runwayml/
stable-diffusion-v1-5/`), and the diffusers -> original key renaming from the
`huggingface_guess` checkout Forge imports (`repositories/huggingface_guess`). Files that
already exist are kept, so a second run costs nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

SD15 = "backend/huggingface/runwayml/stable-diffusion-v1-5"
CHECKPOINTS = {"mobilesd-test-a.safetensors": 1, "mobilesd-test-b.safetensors": 2}
LORA = "mobilesd-test-lora.safetensors"
VAE = "mobilesd-test-vae.safetensors"
VAE_PREFIX = "first_stage_model."
LORA_RANK = 4

# diffusers >= 0.14 names the VAE's mid-block attention like the UNet's; the conversion table in
# huggingface_guess still expects the older names.
VAE_ATTENTION_NAMES = {
    ".to_q.": ".query.",
    ".to_k.": ".key.",
    ".to_v.": ".value.",
    ".to_out.0.": ".proj_attn.",
}


def _import_forge_helpers(forge_dir: Path) -> Any:
    sys.path.insert(0, str(forge_dir / "repositories" / "huggingface_guess"))
    from huggingface_guess import diffusers_convert

    return diffusers_convert


def checkpoint_state_dict(forge_dir: Path, seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    convert = _import_forge_helpers(forge_dir)
    configs = forge_dir / SD15
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
    clip = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))

    state: dict[str, Any] = {}
    for key, value in convert.convert_unet_state_dict(unet.state_dict()).items():
        state[f"model.diffusion_model.{key}"] = value
    vae_sd = {}
    for key, value in vae.state_dict().items():
        for new, old in VAE_ATTENTION_NAMES.items():
            key = key.replace(new, old)
        vae_sd[key] = value
    for key, value in convert.convert_vae_state_dict(vae_sd).items():
        state[f"first_stage_model.{key}"] = value
    for key, value in clip.state_dict().items():
        state[f"cond_stage_model.transformer.{key}"] = value
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def lora_state_dict(seed: int) -> dict[str, Any]:
    """A kohya-style LoRA on the first attention block's projections and one text layer."""
    import torch

    torch.manual_seed(seed)
    targets = {
        # (kohya name, in features, out features)
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (768, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v": (768, 320),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }
    state: dict[str, Any] = {}
    for name, (fan_in, fan_out) in targets.items():
        state[f"{name}.lora_down.weight"] = torch.randn(LORA_RANK, fan_in) * 0.01
        state[f"{name}.lora_up.weight"] = torch.randn(fan_out, LORA_RANK) * 0.01
        state[f"{name}.alpha"] = torch.tensor(float(LORA_RANK))
    return {k: v.to(torch.float16).contiguous() for k, v in state.items()}


def vae_state_dict(checkpoint: Path) -> dict[str, Any]:
    """The first checkpoint's VAE as a stand-alone file (`encoder.*`, `decoder.*`, ...), the
    layout of the VAE files people put in `models/VAE`; Forge lists it under `/sd-modules`."""
    from safetensors.torch import load_file

    state = load_file(str(checkpoint))
    return {k[len(VAE_PREFIX) :]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}


def _save(state: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    part = path.with_name(path.name + ".part")
    save_file(state, str(part), metadata=metadata)
    part.replace(path)


def _short_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forge-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="Forge's models folder")
    args = parser.parse_args(argv)

    checkpoints = args.out / "Stable-diffusion"
    loras = args.out / "Lora"
    vaes = args.out / "VAE"
    for folder in (checkpoints, loras, vaes):
        folder.mkdir(parents=True, exist_ok=True)
    for name, seed in CHECKPOINTS.items():
        path = checkpoints / name
        if not path.exists():
            started = time.monotonic()
            _save(checkpoint_state_dict(args.forge_dir, seed), path, {"format": "pt"})
            print(f"wrote {path} in {time.monotonic() - started:.1f} s")
        print(f"{name}: sha256 {_short_hash(path)}")
    lora = loras / LORA
    if not lora.exists():
        _save(lora_state_dict(3), lora, {"ss_network_dim": str(LORA_RANK)})
        print(f"wrote {lora}")
    vae = vaes / VAE
    if not vae.exists():
        _save(vae_state_dict(checkpoints / next(iter(CHECKPOINTS))), vae, {"format": "pt"})
        print(f"wrote {vae}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
