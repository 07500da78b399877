"""Fréchet ChemNet Distance (Preuer et al., J. Chem. Inf. Model. 2018).

ChemNet and its weights come from the ``fcd-torch`` package (``ChemNet_v0.13_pretrained.pt`` ships
inside it; nothing is downloaded); the weights load with ``torch.load(weights_only=True)``. Its
penultimate activations match the ones behind MOSES's precomputed ``test_stats.npz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

#: SMILES are one-hot encoded and padded to this length (fcd-torch's value)
PAD_LENGTH = 350


@cache
def chemnet(device: str = "cpu"):
    """The ChemNet ``nn.Sequential`` in eval mode on ``device`` (loaded once per process)."""
    from pathlib import Path

    import fcd_torch
    import torch
    from fcd_torch.utils import load_imported_model

    path = Path(fcd_torch.__file__).parent / "ChemNet_v0.13_pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"ChemNet weights not found at {path} (reinstall fcd-torch)")
    try:  # weights_only: the file's pickle may only rebuild tensors and plain containers
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt, or needs pickled code: a broken install
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(
            f"ChemNet weights {path} do not load with weights_only=True ({first}); reinstall "
            "fcd-torch"
        ) from err
    model = load_imported_model(weights)
    return model.eval().to(device)


def chemnet_activations(
    smiles: Sequence[str], *, batch_size: int = 512, device: str = "cpu", canonical: bool = False
) -> np.ndarray:
    """ChemNet activations, shape ``(N, 512)`` float32, for valid SMILES (canonicalized first, as
    in fcd-torch; ``canonical=True``: they are RDKit canonical already). Raises ``ValueError``
    naming an invalid SMILES."""
    import torch
    from fcd_torch.utils import get_one_hot

    from medgen.chem.mol import canonical_smiles

    model = chemnet(device)
    out = []
    for start in range(0, len(smiles), batch_size):
        batch = []
        for s in smiles[start : start + batch_size]:
            canon = s if canonical else canonical_smiles(s)
            if canon is None:
                raise ValueError(f"FCD needs valid SMILES; got {s!r}")
            one_hot = get_one_hot(canon, PAD_LENGTH)  # (L, vocab)
            batch.append(one_hot / one_hot.shape[1])
        x = torch.from_numpy(np.stack(batch)).float().transpose(1, 2).to(device)  # (B, vocab, L)
        with torch.no_grad():
            out.append(model(x).cpu().numpy())
    return np.vstack(out) if out else np.zeros((0, 512), dtype=np.float32)


def fcd_statistics(
    smiles: Sequence[str], *, batch_size: int = 512, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(512,)`` and covariance ``(512, 512)`` of the ChemNet activations of ``smiles``."""
    if len(smiles) < 2:
        raise ValueError(f"FCD needs at least 2 molecules, got {len(smiles)}")
    return activation_statistics(chemnet_activations(smiles, batch_size=batch_size, device=device))


def activation_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(512,)`` and covariance ``(512, 512)`` of ChemNet ``activations (N, 512)``."""
    return activations.mean(0), np.cov(activations.T)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance ``||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))`` between two
    Gaussians; shapes ``(D,)`` and ``(D, D)``.

    ``Tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``): exact for covariance
    matrices and ~100x faster than a general matrix square root at D = 512.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape}")
    vals, vecs = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # S1^(1/2)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))  # a distance: tiny negatives are round-off
