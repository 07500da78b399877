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
    naming an invalid SMILES.

    Batches hold SMILES of similar length (the order of the result is the input order) and run
    through :class:`_PaddingAwareChemNet`, which does ChemNet's repeated padding work once."""
    from medgen.chem.mol import canonical_smiles

    texts = []
    for s in smiles:
        canon = s if canonical else canonical_smiles(s)
        if not canon:
            raise ValueError(f"FCD needs valid SMILES; got {s!r}")
        texts.append(canon)
    forward = fast_chemnet(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        x = one_hot_batch([texts[i] for i in rows], device=device)
        out[rows] = forward(x).cpu().numpy()
    return out


@cache
def fast_chemnet(device: str = "cpu") -> _PaddingAwareChemNet:
    """:class:`_PaddingAwareChemNet` of :func:`chemnet` on ``device`` (one per process)."""
    return _PaddingAwareChemNet(chemnet(device), device)


@cache
def _vocabulary() -> tuple[dict[str, int], frozenset[str], int, int]:
    """fcd-torch's one-hot vocabulary: symbol -> column, the characters that end a two-letter
    symbol, the unknown column and the number of columns."""
    import fcd_torch.utils as fu

    i2c = getattr(fu, "__vocab")  # module-level names fcd-torch keeps private
    return (
        {c: i for i, c in enumerate(i2c)},
        frozenset(getattr(fu, "__two_letters")),
        int(getattr(fu, "__unk")),
        len(i2c),
    )


def token_columns(smiles: str, pad_length: int = PAD_LENGTH) -> list[int]:
    """The one-hot column of each position fcd-torch's ``get_one_hot(smiles, pad_length)`` sets,
    in order (its end symbol ``.`` last; a SMILES longer than ``pad_length - 1`` symbols is cut
    there, as fcd-torch does). Positions after the list are all-zero padding."""
    c2i, two, unk, _ = _vocabulary()
    if not smiles:
        raise ValueError("ChemNet needs a non-empty SMILES")
    text = smiles + "."
    out: list[int] = []
    src = 0
    while True:
        step = 2 if text[src + 1] in two else 1
        out.append(c2i.get(text[src : src + step], unk))
        src += step
        if text[src] == "." or len(out) == pad_length - 1:
            out.append(c2i["."])
            return out


def one_hot_batch(smiles: Sequence[str], device: str = "cpu"):
    """fcd-torch's ChemNet input of ``smiles``: float32 ``(B, vocab, PAD_LENGTH)``, each set column
    ``1 / vocab`` (its ``get_one_hot(s, PAD_LENGTH) / vocab``, without the float64 arrays)."""
    import torch

    width = _vocabulary()[3]
    columns = [token_columns(s) for s in smiles]
    rows = torch.tensor([i for i, cols in enumerate(columns) for _ in cols], dtype=torch.long)
    steps = torch.tensor([j for cols in columns for j in range(len(cols))], dtype=torch.long)
    cols = torch.tensor([c for cols in columns for c in cols], dtype=torch.long)
    x = torch.zeros(len(smiles), PAD_LENGTH, width)
    x[rows, steps, cols] = 1.0 / width
    return x.transpose(1, 2).to(device)


class _PaddingAwareChemNet:
    """ChemNet's forward pass with the work its all-zero padding repeats done once.

    A SMILES fills the first ~10 of the 88 steps the convolutions leave of its 350 one-hot
    columns; the rest are padding. The convolutions have no bias and SELU(0) = 0, so every
    padding step reaches the LSTMs as an exact zero vector. The first LSTM reads the steps in
    reverse, padding first: its state over the padding is the same for every molecule and is
    computed once (``pad_h``/``pad_c``, indexed by the first padding step). The second LSTM reads
    those shared outputs over the padding, so their input projection is shared too. Only the
    second LSTM's recurrence (h @ W_hh) runs over all 88 steps for every molecule, as it must:
    its state there depends on the molecule. The result is ChemNet's output up to float
    rounding (largest difference ~1e-5 on activations of order 1; ``tests/chem/test_fcd.py``)
    for about three quarters of the work.
    """

    def __init__(self, model, device: str) -> None:
        import torch

        layers = list(model)
        kinds = [type(layer).__name__ for layer in layers]
        lstms = [layers[8], layers[11]] if kinds == _CHEMNET_LAYERS else []
        simple = all(m.num_layers == 1 and m.batch_first and not m.bidirectional for m in lstms)
        if not lstms or not simple or (layers[13].pos, layers[13].dim) != (-1, 1):
            raise TypeError(f"unexpected ChemNet layers {kinds}")
        self.convs = torch.nn.Sequential(*layers[:6])
        self.first = self._weights(layers[8])
        self.second = self._weights(layers[11])
        self.device = device
        self._pad: dict[int, tuple] = {}

    @staticmethod
    def _weights(lstm):
        """Input weights ``(4H, I)``, recurrent weights transposed ``(H, 4H)`` and the two biases
        summed, with the gates reordered from PyTorch's (i, f, g, o) to (i, f, o, g) and the g rows
        doubled (exact in floating point): each step then needs one sigmoid over all gates, as
        tanh(x) = 2 sigmoid(2x) - 1 (PyTorch's CPU tanh costs about three sigmoids)."""
        import torch

        size = lstm.hidden_size
        i, f, g, o = (torch.arange(k * size, (k + 1) * size) for k in range(4))
        dev = lstm.weight_ih_l0.device
        order = torch.cat([i, f, o, g]).to(dev)
        scale = torch.ones(4 * size, 1, device=dev)
        scale[3 * size :] = 2.0
        w_in, w_rec = lstm.weight_ih_l0.detach()[order], lstm.weight_hh_l0.detach()[order]
        bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()[order]
        return (w_in * scale).contiguous(), (w_rec * scale).t().contiguous(), bias * scale[:, 0]

    @staticmethod
    def _cell(gates, c):
        """One LSTM step from the summed pre-activations ``gates (B, 4H)`` in (i, f, o, g) order,
        g doubled (overwritten), and the cell state ``c (B, H)`` (kept): the new ``(h, c)``.

        ``c' = f c + i tanh(g) = f c + 2 i s - i`` with ``s = sigmoid(2g)``, and
        ``h = o tanh(c') = 2 o sigmoid(2c') - o``."""
        import torch

        size = c.shape[1]
        i, f, o, s = gates.sigmoid_().split(size, 1)
        c = torch.addcmul(f * c, i, s, value=2.0).sub_(i)
        return torch.addcmul(-o, o, torch.sigmoid(2.0 * c), value=2.0), c

    def _padding(self, steps: int) -> tuple:
        """First-LSTM states after the padding from each step on (``steps + 1`` rows, the last the
        zero start) and the second LSTM's input projection of those outputs ``(steps, 4H)``."""
        import torch

        if steps not in self._pad:
            w_in, w_rec, bias = self.first
            size = w_rec.shape[0]
            h = torch.zeros(steps + 1, size, device=self.device)
            c = torch.zeros(steps + 1, size, device=self.device)
            for t in range(steps - 1, -1, -1):
                gates = torch.addmm(bias.unsqueeze(0), h[t + 1 : t + 2], w_rec)  # zero input
                ht, ct = self._cell(gates, c[t + 1 : t + 2])
                h[t], c[t] = ht[0], ct[0]
            w2_in, _, bias2 = self.second
            self._pad[steps] = (h, c, torch.addmm(bias2, h[:steps], w2_in.t()))
        return self._pad[steps]

    def __call__(self, x):
        import torch

        with torch.no_grad():
            y = self.convs(x).transpose(1, 2)  # (B, T, 32); exact zeros over the padding
            n, steps = y.shape[:2]
            pad_h, pad_c, pad_proj = self._padding(steps)
            filled = (y != 0).any(2)  # (B, T)
            # first padding step of each molecule: one past its last non-zero step
            start = torch.where(filled.any(1), steps - filled.flip(1).int().argmax(1), 0)
            reach = int(start.max())
            # first LSTM, reverse order, over each molecule's own steps only
            w_in, w_rec, bias = self.first
            h, c = pad_h[start], pad_c[start]
            inputs = torch.matmul(y[:, :reach], w_in.t()) + bias  # (B, reach, 4H1)
            outputs = torch.empty(n, reach, w_rec.shape[0], device=y.device)
            for t in range(reach - 1, -1, -1):
                ht, ct = self._cell(torch.addmm(inputs[:, t], h, w_rec), c)
                own = (t < start).unsqueeze(1)  # others still read padding: the shared state
                h, c = torch.where(own, ht, pad_h[t]), torch.where(own, ct, pad_c[t])
                outputs[:, t] = h
            # second LSTM: own input projections before the padding, the shared one after
            w2_in, w2_rec, bias2 = self.second
            proj = torch.matmul(outputs, w2_in.t()) + bias2  # (B, reach, 4H2)
            after = torch.arange(reach, device=y.device).unsqueeze(0) >= start.unsqueeze(1)
            proj = torch.where(after.unsqueeze(2), pad_proj[:reach].unsqueeze(0), proj)
            h = torch.zeros(n, w2_rec.shape[0], device=y.device)
            c = torch.zeros_like(h)
            for t in range(steps):
                shared = pad_proj[t].expand(n, -1)
                h, c = self._cell(torch.addmm(proj[:, t] if t < reach else shared, h, w2_rec), c)
            return h  # the last step's output, what ChemNet's IndexTensor(-1) keeps


#: ChemNet's layers in fcd-torch's ``load_imported_model`` (what the fast path was written for)
_CHEMNET_LAYERS = [
    "SamePadding1d", "Conv1d", "SELU", "SamePadding1d", "Conv1d", "SELU",
    "Transpose", "Reverse", "LSTM", "IndexTuple", "Reverse", "LSTM", "IndexTuple", "IndexTensor",
]  # fmt: skip


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
