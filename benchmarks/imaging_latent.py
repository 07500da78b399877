"""Pixel-space vs latent diffusion: peak memory and time of one training step and one sample.

For each size (64^3, 128^3, 256^3 by default) and in the same run, each measurement in its own
process (so peak memory is its own):

- ``pixel step``: one training step of model=ddpm3d's UNet (rflow) on volumes, batch 1;
- ``latent step``: one training step of the same UNet on the autoencoder's latents (4x, 3
  channels), batch 1, latents cached (as ``cache_latents`` does after the first epoch);
- ``encode`` / ``decode``: the autoencoder (phantom128_ae's network) on one volume, whole and in
  tiles of ``--tile`` voxels;
- ``pixel sample`` / ``latent sample``: one network evaluation times ``--steps`` (rflow), plus the
  decode for the latent model.

Sizes whose estimated pixel-step memory exceeds ``--max-gib`` are skipped and say so. Untrained
weights: speed and memory do not depend on them. ``--only`` runs some measurements only (e.g. the
autoencoder's four rows); the last column compares pixel with latent and whole with tiled rows.

    OMP_NUM_THREADS=1 python benchmarks/imaging_latent.py --sizes 64 128
    OMP_NUM_THREADS=1 python benchmarks/imaging_latent.py --sizes 256 \
        --only encode encode_tiled decode decode_tiled
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

# the pixel step at 64^3, batch 1, flash attention + activation checkpointing (this benchmark:
# 1.4 GiB); the estimate grows with the voxels, an upper bound (128^3 measured 4.9 GiB)
PIXEL_GIB_AT_64 = 1.4
UNET: dict[str, Any] = {
    "channels": [16, 32, 64],
    "attention_levels": [False, False, True],
    "num_head_channels": 32,
    "num_res_blocks": 1,
    "use_flash_attention": True,
}
AE: dict[str, Any] = {
    "channels": [16, 32, 32],
    "attention_levels": [False] * 3,
    "latent_channels": 3,
}


def _unet(channels: int):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=3, in_channels=channels, out_channels=channels, norm_num_groups=8, **UNET
    )


def measure(what: str, size: int, steps: int, tile: int) -> dict[str, float]:
    """One measurement in this process: seconds and peak RSS (GiB)."""
    import torch

    from medgen.imaging.autoencoder import AutoencoderModule

    torch.manual_seed(0)
    start = time.perf_counter()
    if what in ("pixel_step", "latent_step"):
        c, s = (1, size) if what == "pixel_step" else (3, size // 4)
        net = _unet(c)
        from medgen.imaging.components import checkpoint_blocks

        if what == "pixel_step":
            checkpoint_blocks(net)  # the pixel model at its most frugal (docs/latent.md)
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        x = torch.randn(1, c, s, s, s)
        start = time.perf_counter()
        loss = net(x, timesteps=torch.tensor([500])).pow(2).mean()
        loss.backward()
        opt.step()
    elif what in ("pixel_sample", "latent_sample"):
        c, s = (1, size) if what == "pixel_sample" else (3, size // 4)
        net = _unet(c).eval()
        x = torch.randn(1, c, s, s, s)
        start = time.perf_counter()
        with torch.no_grad():
            net(x, timesteps=torch.tensor([500]))
        seconds = (time.perf_counter() - start) * steps
        if what == "latent_sample":
            ae = AutoencoderModule(network=dict(AE), tile_size=[tile] * 3 if tile < size else None)
            t = time.perf_counter()
            with torch.no_grad():
                ae.eval().decode(torch.randn(1, 3, s, s, s))
            seconds += time.perf_counter() - t
        return {"seconds": seconds, "gib": _peak_gib()}
    else:  # encode / decode, whole or tiled
        tiled = what.endswith("_tiled")
        ae = AutoencoderModule(network=dict(AE), tile_size=[tile] * 3 if tiled else None).eval()
        x = torch.randn(1, 1, size, size, size)
        z = torch.randn(1, 3, size // 4, size // 4, size // 4)
        start = time.perf_counter()
        with torch.no_grad():
            ae.encode(x) if what.startswith("encode") else ae.decode(z)
    return {"seconds": time.perf_counter() - start, "gib": _peak_gib()}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


WHAT = (
    "pixel_step",
    "latent_step",
    "pixel_sample",
    "latent_sample",
    "encode",
    "encode_tiled",
    "decode",
    "decode_tiled",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=30, help="sampling steps (rflow)")
    parser.add_argument("--tile", type=int, default=64, help="tile size in voxels")
    parser.add_argument("--max-gib", type=float, default=12.0)
    parser.add_argument(
        "--only", nargs="+", choices=WHAT, default=list(WHAT), help="measurements to run"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.sizes[0], args.steps, args.tile)))
        return 0
    print("| size | measurement | seconds | peak GiB | pixel / latent, whole / tiled |")
    print("| --- | --- | ---: | ---: | ---: |")
    for size in args.sizes:
        estimate = PIXEL_GIB_AT_64 * (size / 64) ** 3
        results: dict[str, dict[str, float]] = {}
        for what in (w for w in WHAT if w in args.only):
            if what.startswith("pixel") and estimate > args.max_gib:
                print(f"| {size}^3 | {what} | skipped | ~{estimate:.0f} est. > --max-gib | |")
                continue
            if what.endswith("_tiled") and args.tile >= size:
                continue
            cmd = [sys.executable, __file__, "--one", what, "--sizes", str(size)]
            cmd += ["--steps", str(args.steps), "--tile", str(args.tile)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[what] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[what]
            ratio = ""
            pairs = {"latent_step": "pixel_step", "latent_sample": "pixel_sample"}
            pairs |= {"encode_tiled": "encode", "decode_tiled": "decode"}
            if (ref := results.get(pairs.get(what, ""))) is not None:
                ratio = (
                    f"{ref['seconds'] / r['seconds']:.1f}x time, {ref['gib'] / r['gib']:.1f}x mem"
                )
            print(
                f"| {size}^3 | {what} | {r['seconds']:.2f} | {r['gib']:.2f} | {ratio} |", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
