"""Phantom generation speed: seconds per subject at 32^3-128^3, against 32^3 in the same run.

    python benchmarks/phantom.py [--repeats 3]

Generation should scale about linearly with the voxel count (ratio per voxel near 1); the
embedded default data must stay cheap next to a training step (~1 s at 32^3 on one core).
"""

from __future__ import annotations

import argparse
import time

from medgen.imaging.phantom import make_phantom


def seconds(size: int, repeats: int) -> float:
    best = float("inf")
    for seed in range(repeats):
        start = time.perf_counter()
        make_phantom(seed, size)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    make_phantom(0, 16)  # warm up imports and caches
    ref = seconds(32, args.repeats)
    print(f"{'size':>6} {'s/subject':>10} {'x 32^3':>8} {'per voxel vs 32^3':>18}")
    for size in (32, 64, 128):
        s = ref if size == 32 else seconds(size, args.repeats)
        voxels = (size / 32) ** 3
        print(f"{size:>5}^3 {s:>10.3f} {s / ref:>8.1f} {s / ref / voxels:>18.2f}")


if __name__ == "__main__":
    main()
