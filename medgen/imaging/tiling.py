"""Tiled encoding and decoding of large volumes with MONAI's ``SlidingWindowInferer``.

An autoencoder's memory grows with the voxels it sees at once: decoding a 64^3 latent into a
256^3 volume holds several full-resolution feature maps. Run through overlapping windows instead
(blended with a Gaussian weight), the peak memory is that of one window plus the stitched output.
``sliding_window_inference`` handles networks whose output is a zoom of their input (an encoder:
1/f of the window, a decoder: f times), so one function serves both directions.

Windows are placed on multiples of the compression factor (window and stride both divisible by
it), so every tile's latent grid is the whole volume's latent grid; the only difference from
whole-volume processing is the tile border, where the receptive field is cut: overlap and
Gaussian blending keep it small (``tests/imaging/test_autoencoder.py`` measures it). Networks with
GroupNorm (AutoencoderKL) also normalise each window by its own statistics, not the volume's:
tiled output is then an approximation whose error shrinks as windows grow. Train with
``patch_size`` near the tile size and the network never sees anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medgen.errors import ConfigError

Network = Callable[[torch.Tensor], torch.Tensor]


def check_tile(
    tile: Sequence[int] | None, overlap: float, factor: int, *, key: str = "model.tile_size"
) -> tuple[int, int, int] | None:
    """A tile size (image voxels, one per axis) checked against the compression ``factor``.

    The window and its stride ``tile * (1 - overlap)`` must be multiples of ``factor`` so that
    tiles sit on the latent grid. Returns the size as a triple, None when tiling is off.
    """
    if tile is None:
        return None
    size = [int(t) for t in tile] if len(tile) == 3 else [int(tile[0])] * 3
    if len(tile) not in (1, 3) or any(s < factor or s % factor for s in size):
        raise ConfigError(key, list(tile), f"1 or 3 sizes, multiples of the compression {factor}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(key.replace("tile_size", "tile_overlap"), overlap, "a share in [0, 1)")
    for s in size:
        stride = s * (1.0 - overlap)
        if abs(stride - round(stride)) > 1e-6 or round(stride) % factor:
            raise ConfigError(
                key.replace("tile_size", "tile_overlap"),
                overlap,
                f"a share that makes the stride {key}*(1-overlap) a multiple of {factor} "
                f"(size {s}: e.g. 0.25 or 0.5)",
            )
    return size[0], size[1], size[2]


def tiled(
    network: Network,
    x: torch.Tensor,
    *,
    roi: Sequence[int] | None,
    overlap: float = 0.25,
) -> torch.Tensor:
    """``network(x)`` for ``x`` (B, C, D, H, W), window by window when ``roi`` is smaller than
    the volume along some axis (``roi``: the window in ``x``'s voxels); else in one pass.

    The output may be a zoom of the input (encoders, decoders): MONAI stitches it at that scale.
    """
    if roi is None or all(int(r) >= int(s) for r, s in zip(roi, x.shape[2:], strict=True)):
        return network(x)
    from monai.inferers import sliding_window_inference

    window = [min(int(r), int(s)) for r, s in zip(roi, x.shape[2:], strict=True)]
    out = sliding_window_inference(
        x,
        window,
        1,
        network,
        overlap=overlap,
        mode="gaussian",
        roi_weight_map=window_weights(window, device=x.device),
        progress=False,
    )
    assert isinstance(out, torch.Tensor)  # one tensor in, one tensor out
    return out


def window_weights(
    window: Sequence[int], *, sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(1, 1, *window) Gaussian blending weights, the product of one 1D Gaussian per axis
    (sigma ``sigma_scale * size``), never clamped.

    MONAI's ``compute_importance_map`` raises every weight below 1e-3 to 1e-3: at the volume's
    faces, where the 3D product of two small edge weights falls below that floor, a window's
    padded edge would then count as much as a neighbour's centre. Unclamped, the smallest weight
    of a window is ~1e-8 (no voxel is left without weight).
    """
    axes = []
    for size in window:
        pos = torch.arange(int(size), dtype=torch.float64) - (int(size) - 1) / 2.0
        axes.append(torch.exp(-0.5 * (pos / (sigma_scale * int(size))) ** 2))
    grid = torch.meshgrid(*axes, indexing="ij")
    w = grid[0] * grid[1] * grid[2]
    return (w / w.max()).float()[None, None].to(device)
