"""Seconds per synthetic volume for DDPM-1000, DDIM-50, DDIM-20 and RFlow-30, in one run.

Speed does not depend on training, so the models are untrained ``DiffusionModule``s built from the
default ``model=ddpm3d`` and ``model=rflow3d`` configs. Each sampler draws ``--n`` volumes (default
1) through ``medgen.imaging.api.generate_volumes``, after one warm-up step; the table reports
seconds per volume, seconds per step, and the speed-up against DDPM-1000 measured in the same run.

    python benchmarks/imaging_sample.py               # 32^3 on CPU (and 64^3 too on a GPU)
    python benchmarks/imaging_sample.py --size 16     # a quick look
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medgen.imaging.api import generate_volumes
from medgen.imaging.intensity import IntensityMapping
from medgen.records import DataMeta, Sampler, SampleSettings

ROOT = Path(__file__).resolve().parents[1]
RUNS = (  # (label, model config, sampler, steps)
    ("DDPM 1000", "ddpm3d", "ddpm", 1000),
    ("DDIM 50", "ddpm3d", "ddim", 50),
    ("DDIM 20", "ddpm3d", "ddim", 20),
    ("RFlow 30", "rflow3d", "rflow", 30),
)


def build_model(name: str, size: int):
    """An untrained DiffusionModule from ``conf/model/<name>.yaml`` for ``size``^3 CT volumes."""
    import hydra
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    meta = DataMeta(
        source="benchmark",
        spatial_size=(size, size, size),
        spacing=(1.0, 1.0, 1.0),
        affine=tuple(tuple(row) for row in torch.eye(4).tolist()),
        intensity=IntensityMapping().to_dict(),
        channel_names=("ct",),
    )
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model, data_meta=meta.to_dict()).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="edge in voxels (repeatable)")
    parser.add_argument("--n", type=int, default=1, help="volumes per sampler")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.size or ([32, 64] if args.device.startswith("cuda") else [32])
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, n={args.n} per sampler")
    for size in sizes:
        models = {name: build_model(name, size) for name in {r[1] for r in RUNS}}
        params = sum(p.numel() for p in models["ddpm3d"].unet.parameters()) / 1e6
        rows = []
        for label, model, sampler, steps in RUNS:
            module = models[model]
            warm = SampleSettings(sampler=Sampler(sampler), steps=1)
            generate_volumes(module, 1, warm, device=args.device)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            settings = SampleSettings(seed=1, sampler=Sampler(sampler), steps=steps)
            generate_volumes(module, args.n, settings, batch_size=args.n, device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / args.n
            rows.append((label, steps, seconds))
            print(f"  {size}^3 {label}: {seconds:.2f} s/volume", flush=True)
        ref = rows[0][2]
        print(f"\n{size}^3 volumes, UNet {params:.2f} M parameters, {args.device}")
        print("| sampler | steps | s / volume | s / step | speed-up vs DDPM-1000 |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for label, steps, seconds in rows:
            print(
                f"| {label} | {steps} | {seconds:.2f} | {seconds / steps:.3f} | "
                f"{ref / seconds:.1f}x |"
            )
        print()


if __name__ == "__main__":
    main()
