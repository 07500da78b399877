"""Training throughput of ``DiffusionModule`` in Lightning against a plain PyTorch loop.

Both loops train the same MONAI ``DiffusionModelUNet`` (the ``model=ddpm3d`` defaults) with the same
``DDPMScheduler`` loss, AdamW and EMA update, on the same DataLoader over cached 32^3 phantoms, in
fresh processes (so peak RSS is each loop's own). Reported: steady-state training steps per second
(after warm-up steps), peak resident memory (and peak GPU memory on CUDA), and the ratio against the
plain loop measured in the same run. Target: Lightning's overhead under 5% (ratio >= 0.95).

    python benchmarks/imaging_train.py                # 32^3 (and 64^3 when a GPU is present)
    python benchmarks/imaging_train.py --steps 40 --repeats 3 --sizes 32 64
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _setup(size: int, batch_size: int, device: str):
    import torch

    from medgen.imaging.data import PhantomDataModule
    from medgen.imaging.diffusion import DiffusionModule

    torch.manual_seed(0)
    dm = PhantomDataModule(size=size, num_train=batch_size * 4, batch_size=batch_size, seed=0)
    dm.setup()
    module = DiffusionModule(warmup_steps=1).to(device)  # the model=ddpm3d nodes, no callbacks
    return dm, module


def run_plain(size: int, batch_size: int, steps: int, warmup: int, device: str) -> float:
    """A hand-written loop doing what ``DiffusionModule.training_step`` + EMA do."""
    import torch

    dm, module = _setup(size, batch_size, device)
    unet, ema, inferer = module.unet, module.ema, module.inferer
    opt = torch.optim.AdamW(unet.parameters(), lr=module.hparams.optimizer["lr"])
    unet.train()
    step, start = 0, None
    while step < steps:
        for batch in dm.train_dataloader():
            x0 = batch["image"].to(device, non_blocking=True)
            noise = torch.randn_like(x0)
            t = torch.randint(0, module.num_train_timesteps, (x0.shape[0],), device=device)
            pred = inferer(inputs=x0, diffusion_model=unet, noise=noise, timesteps=t)
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ema.update(unet, step=step)
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            if step >= steps:
                break
    _sync(device)
    return (steps - warmup) / (time.perf_counter() - start)


def run_lightning(size: int, batch_size: int, steps: int, warmup: int, device: str) -> float:
    import pytorch_lightning as pl

    dm, module = _setup(size, batch_size, device)
    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == warmup:
                _sync(device)
                marks["start"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            _sync(device)
            marks["end"] = time.perf_counter()

    trainer = pl.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, datamodule=dm)
    return (steps - warmup) / (marks["end"] - marks["start"])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    fn = run_plain if args.variant == "plain" else run_lightning
    rate = fn(args.size, args.batch_size, args.steps, args.warmup, device)
    out = {
        "steps_per_s": rate,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def measure(variant: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--size",
        str(size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{variant} {size}^3 failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "lightning"], dest="variant")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return

    import torch

    sizes = args.sizes or ([32, 64] if torch.cuda.is_available() else [32])
    print(
        f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads "
        f"{torch.get_num_threads()}, batch {args.batch_size}, {args.steps} steps "
        f"({args.warmup} warm-up), median of {args.repeats} runs, alternating order"
    )
    header = (
        f"{'size':>5} {'loop':<10} {'steps/s':>9} {'(min-max)':>13} {'peak RSS MiB':>13} "
        f"{'GPU MiB':>8} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "lightning": []}
        for r in range(args.repeats):
            order = ["plain", "lightning"] if r % 2 == 0 else ["lightning", "plain"]
            for variant in order:
                runs[variant].append(measure(variant, size, args))
        med = {v: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for v, rs in runs.items()}
        ref = med["plain"]["steps_per_s"]
        for variant in ("plain", "lightning"):
            m = med[variant]
            gpu = f"{m['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in m else "-"
            rates = [r["steps_per_s"] for r in runs[variant]]
            spread = f"({min(rates):.2f}-{max(rates):.2f})"
            print(
                f"{size:>5} {variant:<10} {m['steps_per_s']:>9.3f} {spread:>13} "
                f"{m['peak_rss_mib']:>13.0f} {gpu:>8} {m['steps_per_s'] / ref:>6.3f}"
            )


if __name__ == "__main__":
    main()
