"""Peak host memory of `pretrained_components` at real SD 1.5 size, against the loaded model's own size.

1. `make` writes random weights in the released layouts into --workdir (once; about 6 GB of disk, 4.3 GB
   more for the .ckpt): `v1-5-pruned-emaonly.safetensors` or `.ckpt` (original LDM keys: UNet, VAE, text
   encoder, schedule buffers; 1,145 keys, float32), `mm_sd_v15_v2.ckpt` (AnimateDiff's keys, a torch pickle, 588 keys),
   `sd-image-variations/image_encoder/` (ViT-L/14 config + model.safetensors) and `backbone.pth`
   (insightface iresnet100). Safetensors files are written tensor by tensor; pickles need their size.
2. `measure` loads them in a fresh subprocess exactly as the README does and reports its peak resident set
   (VmHWM: anonymous and file-backed pages), the resident set before loading (interpreter and libraries), the
   bytes of every parameter and buffer loaded, and the wall time.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model_memory.py --workdir /tmp/durian-memory --dtype float32
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from data_specs.model import ModelFlavour, model_flavour
from model.encoders import IResNet
from model.key_maps import LDM_UNET_PREFIX, LDM_VAE_PREFIX, motion_key_map, unet_key_map, vae_key_map

# The SD 1.5 text encoder (CLIP ViT-L/14 text tower): in the single file, unused by Durian.
SD15_TEXT_ENCODER = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                     "num_hidden_layers": 12, "max_position_embeddings": 77}
# LDM's registered schedule buffers, one value per training timestep.
LDM_SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                        "posterior_mean_coef1", "posterior_mean_coef2")


def meta_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def random_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape) * 0.02


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A float32 .safetensors file of random tensors, written one tensor at a time."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data on 8 bytes
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for shape in shapes.values():
            file.write(random_tensor(tuple(shape)).numpy().tobytes())


def sd15_single_file_shapes(flavour: ModelFlavour) -> dict[str, tuple[int, ...]]:
    """Every key of the released SD 1.5 single file, in the original layout, with its shape."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**flavour.unet.diffusers_config())
        vae = AutoencoderKL(**flavour.vae.diffusers_config())
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))
    shapes: dict[str, tuple[int, ...]] = {}
    unet_keys, vae_keys = unet_key_map(unet.config), vae_key_map(vae.config)
    for key, shape in meta_shapes(unet).items():
        shapes[LDM_UNET_PREFIX + unet_keys.to_original(key)] = tuple(shape)
    for key, shape in meta_shapes(vae).items():
        original = vae_keys.to_original(key)
        # LDM's VAE attention projections are 1x1 convolutions.
        attention_weight = ".mid.attn_1." in original and original.endswith("weight") and len(shape) == 2
        shapes[LDM_VAE_PREFIX + original] = (*shape, 1, 1) if attention_weight else tuple(shape)
    for key, shape in meta_shapes(text).items():
        shapes[f"cond_stage_model.transformer.{key}"] = tuple(shape)
    # A buffer transformers no longer saves (int64 in the release; a loader skips it whatever its dtype).
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (1, SD15_TEXT_ENCODER[
        "max_position_embeddings"])
    for key in LDM_SCHEDULE_BUFFERS:
        shapes[key] = (flavour.noise_schedule.num_train_timesteps,)
    shapes["model_ema.decay"] = shapes["model_ema.num_updates"] = ()
    return shapes


def animatediff_state(flavour: ModelFlavour) -> Iterator[tuple[str, torch.Tensor]]:
    """The original mm_sd_v15_v2 keys with random values: two positional tables per transformer block."""
    with init_empty_weights():
        adapter = MotionAdapter(**flavour.motion.diffusers_config(flavour.unet))
    keys = motion_key_map(adapter.config)
    for key, shape in meta_shapes(adapter).items():
        original = keys.to_original(key)
        if key.endswith("pos_embed.pe"):
            block = original.removesuffix(".pos_embed.pe")
            for attention in (0, 1):
                yield f"{block}.attention_blocks.{attention}.pos_encoder.pe", random_tensor(tuple(shape))
        else:
            yield original, random_tensor(tuple(shape))


def make(workdir: Path, flavour: ModelFlavour, sd15_format: str) -> dict[str, Path]:
    """Write the released-layout files (skipping those already there); return their paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"sd15": workdir / f"v1-5-pruned-emaonly.{sd15_format}", "motion_adapter": workdir / "mm_sd_v15_v2.ckpt",
             "image_encoder": workdir / "sd-image-variations", "arcface": workdir / "backbone.pth"}
    if not files["sd15"].is_file():
        shapes = sd15_single_file_shapes(flavour)
        print(f"writing {files['sd15']} ({len(shapes)} keys)", flush=True)
        if sd15_format == "safetensors":
            write_safetensors(files["sd15"], shapes)
        else:  # the Lightning checkpoint: the weights under `state_dict`
            state = {key: random_tensor(shape) for key, shape in shapes.items()}
            torch.save({"state_dict": state, "global_step": 840000}, files["sd15"])
            del state
    if not files["motion_adapter"].is_file():
        state = dict(animatediff_state(flavour))
        print(f"writing {files['motion_adapter']} ({len(state)} keys)", flush=True)
        torch.save(state, files["motion_adapter"])
        del state
    encoder_folder = files["image_encoder"] / "image_encoder"
    if not (encoder_folder / "model.safetensors").is_file():
        config = CLIPVisionConfig(**flavour.image_encoder.transformers_config())
        with init_empty_weights():
            encoder = CLIPVisionModelWithProjection(config)
        encoder_folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(encoder_folder)
        print(f"writing {encoder_folder}", flush=True)
        write_safetensors(encoder_folder / "model.safetensors", {k: tuple(s) for k, s in meta_shapes(encoder).items()})
    if not files["arcface"].is_file():
        spec = flavour.identity_encoder
        print(f"writing {files['arcface']}", flush=True)
        torch.save(IResNet(spec.arch, spec.embedding_dim, spec.widths).state_dict(), files["arcface"])
    return files


def resident_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, RssAnon, ...), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure(files: dict[str, Path], flavour: ModelFlavour, dtype: torch.dtype) -> dict:
    """Load every part as the README does (in this process), then insert the motion modules as stage 2 does,
    and report memory and time."""
    from data_specs.model import PretrainedPaths
    from model.builders import load_motion_adapter, pretrained_components

    before = resident_mib("VmRSS")
    start = time.perf_counter()
    paths = PretrainedPaths(sd15=str(files["sd15"]), motion_adapter=str(files["motion_adapter"]),
                            image_encoder=str(files["image_encoder"]), arcface=str(files["arcface"]))
    parts = pretrained_components(flavour, paths, dtype=dtype)
    parts.model.add_motion_modules(load_motion_adapter(paths.motion_adapter, flavour, dtype))
    seconds = time.perf_counter() - start
    modules = {"model": parts.model, "vae": parts.vae, "image_encoder": parts.image_encoder,
               "identity_encoder": parts.identity_encoder}
    sizes = {name: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) / 2**20
             for name, m in modules.items()}
    return {"dtype": str(dtype).removeprefix("torch."), "seconds": seconds, "rss_before_mib": before,
            "peak_rss_mib": resident_mib("VmHWM"), "final_rss_mib": resident_mib("VmRSS"),
            "model_mib": sum(sizes.values()), "parts_mib": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/durian-memory"))
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--sd15-format", choices=["safetensors", "ckpt"], default="safetensors",
                        help="Which release of the SD 1.5 single file to load.")
    parser.add_argument("--flavour", default="sd15", help="sd15; tiny checks the script in seconds.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    flavour = model_flavour(args.flavour)
    files = make(args.workdir, flavour, args.sd15_format)
    if args.child:
        print(json.dumps(measure(files, flavour, getattr(torch, args.dtype))))
        return
    # A fresh process, so that nothing of `make` counts.
    command = [sys.executable, __file__, "--workdir", str(args.workdir), "--dtype", args.dtype, "--flavour",
               args.flavour, "--sd15-format", args.sd15_format, "--child"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    model, peak, before = result["model_mib"], result["peak_rss_mib"], result["rss_before_mib"]
    print(json.dumps(result, indent=1))
    print(f"| .{args.sd15_format} | {result['dtype']} | {model / 1024:.2f} GiB | {before / 1024:.2f} GiB | "
          f"{peak / 1024:.2f} GiB | {peak / model:.2f} | {(peak - before) / model:.2f} | {result['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
