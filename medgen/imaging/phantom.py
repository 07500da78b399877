"""Procedural CT torso phantoms: the embedded default data set of medgen's imaging half.

A seeded generator of CT-like torso volumes (thorax and upper abdomen) with anatomy that varies per
subject: body outline with subcutaneous fat and muscle layers, paraspinal muscles, two lungs with a
domed diaphragm, heart, aorta, liver, two kidneys, a segmented spine (vertebral bodies with cortical
shell and cancellous core, discs, posterior arches, spinal canal) and ribs. Each subject draws its
body size, fat thickness, organ sizes and positions, a small rigid pose change and a smooth
deformation, and each tissue's mean HU; voxels get a smooth texture, partial-volume blur and
correlated CT noise.

Everything is vectorised NumPy on coordinate grids in world millimetres, so any size (16^3 to 256^3)
and voxel spacing give the same anatomy at that resolution; a 64^3 phantom takes well under 1 s.
The same seed and geometry give the same volume bit for bit.

Array axes are voxel indices ``(i, j, k)`` and the affine maps them to RAS+ world coordinates in mm
(``+x`` to the subject's right, ``+y`` anterior, ``+z`` superior), origin at the centre of
the volume.

Label table (value: name, mean HU ± between-subject SD of that mean):

====  ===================  ==================================================
0     air (outside body)   -1000
1     subcutaneous fat     -100 ± 10
2     muscle               45 ± 5   (body wall and paraspinal muscles)
3     soft tissue          30 ± 5   (other mediastinal/abdominal contents)
4     lung, left           -850 ± 30
5     lung, right          -850 ± 30
6     heart                40 ± 5   (blood and myocardium, no contrast)
7     aorta                45 ± 5
8     liver                60 ± 6
9     kidney, left         30 ± 5
10    kidney, right        30 ± 5
11    vertebra             cortical shell 750 ± 60, cancellous core 250 ± 40
12    spinal canal         15 ± 5   (cord and CSF)
13    intervertebral disc  85 ± 8
14    rib                  650 ± 60
====  ===================  ==================================================

On top of the means: a smooth texture (SD ~8 HU in organs, ~40 HU in lungs), a partial-volume blur
of 0.5 voxel and Gaussian CT noise (SD ``noise_hu``, default 12 HU, slightly correlated); values are
clipped to the CT range [-1024, 3071].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medgen.errors import UserError

# value -> (name, mean HU, between-subject SD of the mean)
LABELS: dict[int, tuple[str, float, float]] = {
    0: ("air", -1000.0, 0.0),
    1: ("subcutaneous_fat", -100.0, 10.0),
    2: ("muscle", 45.0, 5.0),
    3: ("soft_tissue", 30.0, 5.0),
    4: ("lung_left", -850.0, 30.0),
    5: ("lung_right", -850.0, 30.0),
    6: ("heart", 40.0, 5.0),
    7: ("aorta", 45.0, 5.0),
    8: ("liver", 60.0, 6.0),
    9: ("kidney_left", 30.0, 5.0),
    10: ("kidney_right", 30.0, 5.0),
    11: ("vertebra", 750.0, 60.0),
    12: ("spinal_canal", 15.0, 5.0),
    13: ("disc", 85.0, 8.0),
    14: ("rib", 650.0, 60.0),
}
LABEL_NAMES: dict[int, str] = {k: v[0] for k, v in LABELS.items()}
CANCELLOUS_HU = (250.0, 40.0)  # vertebral core: mean, between-subject SD
SIZE_CLASSES = ("small", "medium", "large")  # body-size bins used as an optional class condition
SIZE_BIN_EDGES = (0.94, 1.06)  # body scale factor thresholds between the bins
DEFAULT_FOV_MM = 420.0  # field of view per axis when no spacing is given


@dataclass
class Phantom:
    """One phantom subject.

    Attributes:
        image: (D, H, W) float32, CT numbers in HU.
        labels: (D, H, W) uint8, values from :data:`LABELS`.
        affine: (4, 4) float64, voxel index -> RAS+ world mm.
        seed: the subject's seed.
        size_class: body-size bin (index into :data:`SIZE_CLASSES`).
        params: the drawn subject parameters (plain floats), for inspection.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    seed: int
    size_class: int
    params: dict[str, Any] = field(default_factory=dict)


def phantom_affine(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS+ affine (4, 4) float64 of a ``size`` volume at ``spacing`` mm, centred at 0."""
    sp = np.asarray(spacing, dtype=np.float64)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -(np.asarray(size, dtype=np.float64) - 1.0) / 2.0 * sp
    return aff


def resolve_geometry(
    size: int | tuple[int, ...] | list[int], spacing: float | tuple[float, ...] | list[float] | None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Normalise ``size`` (int or 3 ints, each 16..256) and ``spacing`` (None: fit a 420 mm FOV)."""
    shape = tuple(int(s) for s in (size if isinstance(size, list | tuple) else [size] * 3))
    if len(shape) != 3 or any(not 16 <= s <= 256 for s in shape):
        raise UserError(f"phantom size must be 3 ints in 16..256 (or one int), got {size}")
    if spacing is None:
        sp = tuple(DEFAULT_FOV_MM / s for s in shape)
    else:
        sp = tuple(
            float(s) for s in (spacing if isinstance(spacing, list | tuple) else [spacing] * 3)
        )
    if len(sp) != 3 or any(not s > 0 for s in sp):
        raise UserError(f"phantom spacing must be 3 positive mm values (or one), got {spacing}")
    return shape, sp


def size_class_of(scale: float) -> int:
    """Body-size bin of a body scale factor: 0 small (< 0.94), 1 medium, 2 large (>= 1.06)."""
    return int(np.searchsorted(SIZE_BIN_EDGES, scale, side="right"))


def _rotation(rng: np.random.Generator, deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad([rng.uniform(-d, d) for d in deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], cells: int = 6
) -> np.ndarray:
    """A smooth random field of unit-ish SD: Gaussian noise on a coarse grid, upsampled (order
    1)."""
    from scipy.ndimage import zoom

    coarse = rng.standard_normal((cells, cells, cells)).astype(np.float32)
    out = zoom(coarse, [s / cells for s in shape], order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1], : shape[2]]


def _ellipsoid(x, y, z, c, r) -> np.ndarray:
    """Normalised squared radius of points about an axis-aligned ellipsoid (<= 1 inside)."""
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


def make_phantom(
    seed: int,
    size: int | tuple[int, int, int] = 32,
    spacing: float | tuple[float, float, float] | None = None,
    *,
    noise_hu: float = 12.0,
) -> Phantom:
    """Generate one torso phantom subject.

    Args:
        seed: the subject's seed; the same seed and geometry give the same volume bit for bit.
        size: voxels per axis (one int or 3 ints, each 16..256).
        spacing: voxel size in mm (one value or 3); None fits a 420 mm field of view.
        noise_hu: SD of the CT noise in HU (0 for a noise-free phantom).

    Returns:
        :class:`Phantom`: ``image`` (D, H, W) float32 HU, ``labels`` (D, H, W) uint8, ``affine``.
    """
    from scipy.ndimage import gaussian_filter

    shape, sp = resolve_geometry(size, spacing)
    rng = np.random.default_rng(int(seed))
    affine = phantom_affine(shape, sp)

    # --- subject parameters -------------------------------------------------------------------
    s = float(rng.uniform(0.82, 1.18))  # body scale
    fat = float(rng.uniform(6.0, 32.0)) * s  # subcutaneous fat thickness (mm)
    wall = float(rng.uniform(8.0, 16.0)) * s  # muscle layer thickness (mm)
    aspect = float(rng.uniform(0.64, 0.74))  # AP / LR ratio of the body outline
    jitter = lambda sd=5.0: rng.normal(0.0, sd, 3)  # noqa: E731 - organ position jitter (mm)
    scl = lambda: rng.uniform(0.9, 1.1, 3)  # noqa: E731 - organ size jitter
    rot = _rotation(rng, (3.0, 3.0, 8.0))
    shift = rng.normal(0.0, [6.0, 6.0, 12.0])
    warp_k = rng.normal(0.0, 2 * np.pi / 350.0, (3, 3))  # wave vectors (rad/mm), ~350 mm waves
    warp_phase = rng.uniform(0, 2 * np.pi, 3)
    warp_amp = rng.uniform(2.0, 7.0, 3)  # mm
    hu = {k: m + rng.normal(0.0, sd) for k, (_, m, sd) in LABELS.items()}
    hu_cancellous = CANCELLOUS_HU[0] + rng.normal(0.0, CANCELLOUS_HU[1])

    # --- world coordinates (mm) of every voxel, mapped into the subject's anatomy frame ---------
    idx = [
        np.arange(n, dtype=np.float32) * np.float32(sp[a]) + np.float32(affine[a, 3])
        for a, n in enumerate(shape)
    ]
    px, py, pz = idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]
    px, py, pz = px - shift[0], py - shift[1], pz - shift[2]
    rt = rot.T.astype(np.float32)  # inverse rotation: world -> anatomy frame
    x = rt[0, 0] * px + rt[0, 1] * py + rt[0, 2] * pz
    y = rt[1, 0] * px + rt[1, 1] * py + rt[1, 2] * pz
    z = rt[2, 0] * px + rt[2, 1] * py + rt[2, 2] * pz
    # smooth deformation: one low-frequency sinusoidal displacement wave per axis
    disp = [
        np.float32(warp_amp[a])
        * np.sin(warp_k[a, 0] * x + warp_k[a, 1] * y + warp_k[a, 2] * z + warp_phase[a])
        for a in range(3)
    ]
    x, y, z = x + disp[0], y + disp[1], z + disp[2]

    labels = np.zeros(shape, dtype=np.uint8)
    cortical = np.zeros(shape, dtype=bool)

    # --- body outline, fat, muscle wall (elliptic cylinder, slightly narrower low and high) -----
    ax_body = 165.0 * s * (1.0 - 0.05 * (z / 210.0) ** 2)
    ay_body = ax_body * aspect
    r_body = (x / ax_body) ** 2 + (y / ay_body) ** 2
    r_fat = (x / (ax_body - fat)) ** 2 + (y / (ay_body - fat)) ** 2
    r_in = (x / (ax_body - fat - wall)) ** 2 + (y / (ay_body - fat - wall)) ** 2
    labels[r_body <= 1] = 1
    labels[r_fat <= 1] = 2
    inside = r_in <= 1
    labels[inside] = 3

    # spine reference: vertebral body centre, posterior in the body
    ay_mean = 165.0 * s * aspect
    y_vb = -ay_mean + fat + wall + 52.0 * s
    para = (
        _ellipsoid(np.abs(x), y, 0.0, (38.0 * s, y_vb - 38.0 * s, 0.0), (30.0 * s, 26.0 * s, 1.0))
        <= 1
    ) & (r_fat <= 1)
    labels[para] = 2

    # --- lungs above a domed diaphragm, ribs in the thoracic wall ------------------------------
    z_dia = -20.0 * s + rng.normal(0.0, 8.0)
    for lab, side in ((4, -1.0), (5, 1.0)):  # RAS: left lung at -x, right at +x
        c = np.array([side * 78.0 * s, 0.0, z_dia + 120.0 * s]) + jitter()
        r = np.array([70.0, 100.0, 150.0]) * s * scl()
        dome_z = (
            z_dia
            + (8.0 if side > 0 else 0.0)
            + 30.0 * s * np.exp(-((x - c[0]) ** 2 + y**2) / (2 * (50.0 * s) ** 2))
        )
        lung = (_ellipsoid(x, y, z, c, r) <= 1) & (z > dome_z) & (r_in <= 0.92)
        lung &= side * x > 14.0 * s
        labels[lung] = lab
    rib_z = z + 0.35 * (y + ay_mean)  # ribs slope down towards the front
    rib_band = np.mod(rib_z - z_dia, 26.0 * s) < 9.0 * s
    ribs = (r_in > 0.86) & (r_in <= 1.02) & rib_band & (z > z_dia - 30 * s) & (z < 200.0 * s)
    ribs &= ~((np.abs(x) < 28.0 * s) & (y > 0))  # no ribs across the sternal cartilage
    labels[ribs & (labels >= 2)] = 14

    # --- heart (tilted ellipsoid), aorta --------------------------------------------------------
    c = np.array([-22.0 * s, 30.0 * s, z_dia + 62.0 * s]) + jitter()
    r = np.array([58.0, 48.0, 62.0]) * s * scl()
    ang = np.deg2rad(-35.0 + rng.normal(0.0, 6.0))
    hx = np.cos(ang) * (x - c[0]) - np.sin(ang) * (y - c[1])
    hy = np.sin(ang) * (x - c[0]) + np.cos(ang) * (y - c[1])
    heart = ((hx / r[0]) ** 2 + (hy / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1) & inside
    labels[heart] = 6
    ca = np.array([-20.0 * s, y_vb + 30.0 * s, 0.0]) + jitter(3.0)
    ra = 12.0 * s * float(rng.uniform(0.85, 1.15))
    aorta = ((x - ca[0]) ** 2 + (y - ca[1]) ** 2 <= ra**2) & (z < z_dia + 125.0 * s) & inside
    labels[aorta] = 7

    # --- liver under the right dome, kidneys behind -----------------------------------------------
    c = np.array([58.0 * s, 12.0 * s, z_dia - 70.0 * s]) + jitter()
    r = np.array([95.0, 85.0, 85.0]) * s * scl()
    dome_r = z_dia + 8.0 + 30.0 * s * np.exp(-((x - 78.0 * s) ** 2 + y**2) / (2 * (50.0 * s) ** 2))
    liver = (_ellipsoid(x, y, z, c, r) <= 1) & (z <= dome_r) & inside & (x > -45.0 * s)
    labels[liver] = 8
    for lab, side, dz in ((9, -1.0, 0.0), (10, 1.0, -15.0)):
        c = np.array([side * 72.0 * s, y_vb + 8.0 * s, z_dia - 115.0 * s + dz]) + jitter()
        r = np.array([27.0, 22.0, 55.0]) * s * scl()
        labels[(_ellipsoid(x, y, z, c, r) <= 1) & inside] = lab

    # --- spine: vertebral bodies and discs along z, posterior arch, canal ----------------------
    period = 34.0 * s
    phase = np.mod(z - rng.uniform(0, period), period)
    r_vb = (x / (21.0 * s)) ** 2 + ((y - y_vb) / (17.0 * s)) ** 2
    disc = (r_vb <= 1) & (phase < 7.0 * s)
    vb = (r_vb <= 1) & ~disc
    y_canal = y_vb - 28.0 * s
    r_canal = (x / (9.0 * s)) ** 2 + ((y - y_canal) / (8.0 * s)) ** 2
    r_arch = (x / (19.0 * s)) ** 2 + ((y - y_canal) / (15.0 * s)) ** 2
    arch = (r_arch <= 1) & (r_canal > 1) & (phase > 4.0 * s) & (phase < 26.0 * s)
    spinous = (np.abs(x) < 5.0 * s) & (y < y_canal - 10 * s) & (y > y_canal - 42.0 * s)
    spinous &= (phase > 8.0 * s) & (phase < 24.0 * s)
    bone = vb | arch | spinous
    labels[disc] = 13
    labels[bone] = 11
    labels[r_canal <= 1] = 12
    cortical = bone & ~(vb & (r_vb <= 0.55))  # cancellous core only inside the vertebral body

    # --- intensities -----------------------------------------------------------------------------
    lut = np.array([hu[k] for k in sorted(LABELS)], dtype=np.float32)
    image = lut[labels]
    image[(labels == 11) & ~cortical] = hu_cancellous
    texture = _smooth_field(rng, shape)
    tex_sd = np.where((labels == 4) | (labels == 5), 40.0, 8.0).astype(np.float32)
    tex_sd[labels == 0] = 0.0
    image += tex_sd * texture
    image = gaussian_filter(image, sigma=0.5, mode="nearest")  # partial volume
    if noise_hu > 0:
        noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.6, mode="wrap")
        noise *= np.float32(noise_hu / max(float(noise.std()), 1e-6))
        image += noise
    image = np.clip(image, -1024.0, 3071.0).astype(np.float32)

    params = {
        "body_scale": s,
        "fat_mm": fat,
        "wall_mm": wall,
        "aspect": aspect,
        "diaphragm_z_mm": float(z_dia),
        "hu": {LABEL_NAMES[k]: float(v) for k, v in hu.items()},
    }
    return Phantom(
        image=image,
        labels=labels,
        affine=affine,
        seed=int(seed),
        size_class=size_class_of(s),
        params=params,
    )
