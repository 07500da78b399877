"""Property-conditioned sampling for the graph VAE: latent property heads stored in the
checkpoint, property targets, and guided prior draws kept only when RDKit agrees.

Heads. ``python -m medgen.molecules.conditioning <ckpt> --out <new ckpt>`` fits one MLP
``z (B, L) -> property (B,)`` per property (``qed``, ``sa``, ``logp``, computed with
:mod:`medgen.chem.properties`) on the posterior means of ``--n`` (20,000) training molecules
drawn at random (``--seed``), holds out 10% of them for an R^2 per head, and writes a copy of
the checkpoint with a ``property_heads`` record (plain tensors and numbers: it still loads with
``torch.load(weights_only=True)``, and the slim tool keeps it).

Targets. ``condition={qed: ">=0.8", sa: "<=3"}`` (or the string ``"qed>=0.8, sa<=3"``): per
property ``>=x``, ``<=x``, ``>x``, ``<x`` or a closed range ``lo..hi``.

Sampling. Candidate ``i`` of seed ``s`` starts from the prior latent that unconditioned sampling
draws for molecule ``i`` (``sample_generator(s, i)``) and takes :data:`STEPS` gradient steps on

    sum_t hinge_t(head_t(z)) + PRIOR_WEIGHT * (|eps| - sqrt(L))^2 / 2

over the candidate's standard normals ``eps``, with ``z = eps`` for the ``N(0, I)`` prior and ``z
= m_k + C_k eps`` for a fitted one (:mod:`medgen.molecules.prior`, the candidate's component
``k`` kept throughout). Hinges are in standard deviations of the property, :data:`MARGIN` beyond
the target; the second term keeps ``eps`` in the typical set of ``N(0, I)``, the shell of radius
``sqrt(L)``, so ``z`` stays where the prior puts mass and the decoder saw latents. Each step is
the gradient clipped to norm 1 per row times :data:`STEP_SIZE` ``* sqrt(L)``; rows never
interact, so candidate ``i`` depends on ``(s, i)`` only. It is then decoded
with its own decoder noise, and kept only if the RDKit values of the decoded molecule meet every
target: the output is the first ``n`` candidates of the index stream that do, within a budget
of :data:`BUDGET_FACTOR` ``x n`` candidates.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medgen.errors import (
    ConfigError,
    InputFileError,
    MissingFileError,
    OutputExistsError,
    UserError,
)
from medgen.utils.logging import get_logger

log = get_logger(__name__)

#: the checkpoint's top-level key holding the heads
KEY = "property_heads"
FORMAT = 1
PROPERTIES = ("qed", "sa", "logp")
DEFAULT_N = 20_000
STEPS = 20  # gradient steps per candidate
STEP_SIZE = 0.05  # step length in units of the typical-set radius sqrt(L)
PRIOR_WEIGHT = 0.5
MARGIN = 0.25  # push this many standard deviations past a target (the heads are not exact)
BUDGET_FACTOR = 50  # candidates looked at, at most, per molecule asked for
CHANCE_SAMPLES = 2000  # unguided prior samples for the chance rate (at most)
STEER_SAMPLES = 1000  # prior draws on which a head's steerability is measured
WEAK_STEER = 0.3  # below this correlation a head cannot steer the decoder
DRAW_BATCH = 1000
_ADD_HEADS = "python -m medgen.molecules.conditioning <ckpt> --out <new .ckpt>"


# ------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """``low <= value <= high`` (either bound may be None; ``strict``: ``<``/``>``)."""

    low: float | None = None
    high: float | None = None
    strict: bool = False

    def met(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.strict else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.strict else value > self.high)
        )

    def text(self) -> str:
        """The canonical form (``>=0.8``, ``<3.0``, ``0.6..0.9``)."""
        if self.low is not None and self.high is not None:
            return f"{self.low!r}..{self.high!r}"
        op = ">" if self.low is not None else "<"
        return f"{op}{'' if self.strict else '='}{self.low if self.high is None else self.high!r}"

    def hinge(self, pred: torch.Tensor, std: float, margin: float) -> torch.Tensor:
        """``(B,)`` distance past the target, in standard deviations plus ``margin`` (0: met)."""
        loss = torch.zeros_like(pred)
        if self.low is not None:
            loss = loss + torch.relu((self.low - pred) / std + margin)
        if self.high is not None:
            loss = loss + torch.relu((pred - self.high) / std + margin)
        return loss


_OPERATORS = "'>=x', '<=x', '>x', '<x' or a range 'lo..hi'"
_ITEM = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|>|<|=|:)\s*(.+?)\s*$")


def _number(key: str, text: str, raw: Any) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(key, raw, _OPERATORS) from None
    if not math.isfinite(value):
        raise ConfigError(key, raw, _OPERATORS + " with finite numbers")
    return value


def parse_target(name: str, raw: Any) -> Target:
    """One property's target from its text (``ConfigError`` naming ``condition.<name>``)."""
    key = f"condition.{name}"
    if not isinstance(raw, str):
        raise ConfigError(key, raw, f"{_OPERATORS} (a quoted string)")
    text = raw.strip()
    if ".." in text:
        lo, hi = (_number(key, part, raw) for part in text.split("..", 1))
        if lo > hi:
            raise ConfigError(key, raw, f"a range lo..hi with lo <= hi (got {lo} > {hi})")
        return Target(low=lo, high=hi)
    for op in (">=", "<=", ">", "<"):
        if text.startswith(op):
            value = _number(key, text[len(op) :].strip(), raw)
            strict = len(op) == 1
            if op[0] == ">":
                return Target(low=value, strict=strict)
            return Target(high=value, strict=strict)
    raise ConfigError(key, raw, _OPERATORS)


def parse_condition(value: Any) -> dict[str, Target]:
    """``{name: Target}`` (sorted by name) from a mapping or a string: ``"{qed: '>=0.8'}"`` (a
    YAML mapping) or ``"qed>=0.8, sa<=3, logp=1..3"``. Unknown properties, bad operators and
    empty conditions are a :class:`~medgen.errors.UserError` naming the key."""
    if isinstance(value, str):
        value = _parse_string(value)
    if not isinstance(value, Mapping) or not value:
        raise ConfigError("condition", value, "property targets, e.g. "
                          "'{qed: \">=0.8\", sa: \"<=3\"}' (molecule models)")  # fmt: skip
    targets = {}
    for name in sorted(map(str, value)):
        if name.lower() not in PROPERTIES:
            raise UserError(f"condition.{name}: unknown property {name!r}; choose from "
                            f"{', '.join(PROPERTIES)}")  # fmt: skip
        targets[name.lower()] = parse_target(name, value[name])
    return targets


def _parse_string(text: str) -> Any:
    if text.strip().startswith("{"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError("condition", text, "a YAML mapping, e.g. {qed: '>=0.8'}") from None
    items: dict[str, str] = {}
    for part in filter(str.strip, re.split(r"[,;]", text)):
        found = _ITEM.match(part)
        if found is None:
            raise ConfigError("condition", text, f"items like 'qed>=0.8', each {_OPERATORS}")
        name, op, rest = found.groups()
        items[name] = rest if op in ("=", ":") else op + rest
    return items


def condition_record(targets: Mapping[str, Target]) -> dict[str, str]:
    """The canonical condition outputs record: ``{"qed": ">=0.8", "sa": "<=3.0"}``."""
    return {name: t.text() for name, t in sorted(targets.items())}


def resolve_condition(
    value: Any, record: Mapping[str, Any] | None, *, stats: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """``condition`` checked against what the model can condition on: a conditional VAE's
    properties (``stats``: its ``condition_stats``; a target no training molecule of its table
    meets is refused), else the heads a checkpoint holds (its ``property_heads`` record);
    returns :func:`condition_record`. A checkpoint without the heads a target needs is a
    :class:`~medgen.errors.UserError` that says how to add them."""
    targets = parse_condition(value)
    if stats is not None:
        names = list(stats["names"])
        missing = [name for name in targets if name not in names]
        if missing:
            raise UserError(f"condition: the model is conditioned on {names} (not {missing})")
        if len(condition_rows(stats, condition_record(targets))) == 0:
            raise UserError(f"condition: no training molecule of the model's condition table "
                            f"meets {condition_record(targets)}; widen the targets")  # fmt: skip
        return condition_record(targets)
    heads = dict(check_record(record)["heads"]) if record is not None else {}
    missing = [name for name in targets if name not in heads]
    if missing:
        have = f"only heads for {sorted(heads)}" if heads else "no property heads"
        raise UserError(f"condition: the checkpoint holds {have} (needed: {missing}); add them "
                        f"with `{_ADD_HEADS}` and sample from the new checkpoint")  # fmt: skip
    return condition_record(targets)


def condition_rows(stats: Mapping[str, Any], condition: Any) -> torch.Tensor:
    """Indices of a conditional VAE's condition-table rows (raw property values of training
    molecules) that meet every target of ``condition``: the conditions it samples from."""
    targets = parse_condition(condition)
    names = list(stats["names"])
    table = np.asarray(stats["table"], dtype=np.float64)
    keep = np.ones(len(table), dtype=bool)
    for name, target in targets.items():
        column = table[:, names.index(name)]
        keep &= np.array([target.met(float(v)) for v in column], dtype=bool)
    return torch.from_numpy(np.flatnonzero(keep))


# ------------------------------------------------------------------------------------ heads


def check_record(record: Any) -> Mapping[str, Any]:
    """A checkpoint's ``property_heads`` record, checked (``InputFileError`` if malformed)."""
    ok = isinstance(record, Mapping) and record.get("format") == FORMAT
    ok = ok and isinstance(record.get("heads"), Mapping)
    if not ok:
        raise InputFileError(f"the checkpoint's {KEY} record is not format {FORMAT}; add the "
                             f"heads again with `{_ADD_HEADS}`")  # fmt: skip
    return record


def record_from_heads(
    heads: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]], **fitted_on: Any
) -> dict[str, Any]:
    """The ``property_heads`` record of :class:`~medgen.molecules.api.PropertyHead` modules:
    per name the state dict (plain tensors), sizes, mean / std and the fit report."""
    out: dict[str, Any] = {}
    for name, head in heads.items():
        first = head.net[0]
        out[name] = {
            "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
            "latent_dim": int(first.in_features),
            "hidden_dim": int(first.out_features),
            "mean": float(head.mean),
            "std": float(head.std),
            **{k: v for k, v in dict(reports.get(name) or {}).items()},
        }
    return {"format": FORMAT, "heads": out, "fitted_on": dict(fitted_on)}


def head_from_record(entry: Mapping[str, Any], device: torch.device | str = "cpu"):
    """A :class:`~medgen.molecules.api.PropertyHead` (eval mode) from one record entry; the
    global RNG is left as it was (the random init is overwritten anyway)."""
    from medgen.molecules.api import PropertyHead

    with torch.random.fork_rng(devices=[]):
        head = PropertyHead(int(entry["latent_dim"]), int(entry["hidden_dim"]))
    try:
        head.load_state_dict(dict(entry["state_dict"]))
    except (RuntimeError, KeyError) as err:
        raise InputFileError(f"a {KEY} entry does not fit its head: {err}") from err
    return head.to(device).eval()


def fit_heads(
    vae: Any,
    smiles: Sequence[str],
    *,
    properties: Sequence[str] = PROPERTIES,
    n: int = DEFAULT_N,
    seed: int = 0,
    epochs: int = 300,
    source: str = "unknown",
) -> dict[str, Any]:
    """Fit one head per property on the posterior means of ``n`` of ``smiles`` (a seeded random
    subset; molecules the model cannot encode are skipped) and return the ``property_heads``
    record. ``vae``: a :class:`~medgen.molecules.api.MoleculeVAE`."""
    from medgen.molecules.api import train_head

    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(smiles), size=min(n, len(smiles)), replace=False))
    kept, z = encode_many(vae, [smiles[int(k)] for k in picks])
    table = property_table(kept, properties)
    heads, reports = {}, {}
    for p, name in enumerate(properties):
        y = torch.tensor(table[:, p], dtype=torch.float32)
        finite = torch.isfinite(y)
        if int(finite.sum()) < 10:
            raise UserError(f"{name}: fewer than 10 molecules with a value to fit a head on")
        order = torch.randperm(int(finite.sum()), generator=torch.Generator().manual_seed(seed))
        heads[name], reports[name] = train_head(
            z[finite][order], y[finite][order], epochs=epochs, seed=seed
        )
    for name, r in steerability(vae, heads, seed=seed).items():
        reports[name]["steer_r"] = r
    return record_from_heads(heads, reports, source=source, molecules=len(kept), seed=seed,
                             skipped=len(picks) - len(kept))  # fmt: skip


@torch.no_grad()
def steerability(
    vae: Any, heads: Mapping[str, Any], *, n: int = STEER_SAMPLES, seed: int = 0
) -> dict[str, float]:
    """Per head, the Pearson correlation over ``n`` prior draws ``z`` between ``head(z)`` and the
    RDKit value of the molecule decoded from ``z`` (with its own decoder noise): whether moving
    ``z`` along the head moves what comes out. A head's held-out R^2 is measured on posterior
    means of training molecules against *their* values; when the decoder's own randomness, not
    ``z``, decides the molecule (a collapsed posterior), that R^2 can be fair and this near 0,
    and guidance cannot beat chance. ``vae``: a :class:`~medgen.molecules.api.MoleculeVAE`."""
    from medgen.molecules.sampling import draw_noise

    model = vae.vae
    was_training = model.training
    model.eval()
    try:
        z, u = draw_noise(model, range(n), seed)
        smiles = model.decode_smiles(z, vae.vocab, temperature=1.0, uniforms=u)
    finally:
        model.train(was_training)
    names = list(heads)
    table = property_table(smiles, names)
    out = {}
    for p, name in enumerate(names):
        pred = heads[name](z).detach().cpu().numpy().astype(np.float64)
        y = table[:, p]
        ok = np.isfinite(y) & np.isfinite(pred)
        good = ok.sum() >= 3 and np.std(pred[ok]) > 0 and np.std(y[ok]) > 0
        out[name] = float(np.corrcoef(pred[ok], y[ok])[0, 1]) if good else 0.0
    return out


def encode_many(vae: Any, smiles: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """``(encodable SMILES, their posterior means (M, L))``, 500 at a time; a conditional
    model's ``(M, L + P)``, each with its own properties (what its property heads read)."""
    from medgen.molecules.graph import FeaturizeError, encode_tokens, smiles_to_tokens

    kept = []
    for s in smiles:
        try:
            encode_tokens(*smiles_to_tokens(s), vae.vocab)
        except (FeaturizeError, ValueError):
            continue
        kept.append(s)
    if not kept:
        raise UserError("none of the molecules can be encoded (atoms outside the vocabulary?)")
    z = torch.cat([vae.encode(kept[i : i + 500], with_condition=True)
                   for i in range(0, len(kept), 500)])  # fmt: skip
    return kept, z


def property_table(smiles: Sequence[str | None], names: Sequence[str]) -> np.ndarray:
    """``(N, P)`` RDKit values of each property (NaN where a SMILES is not valid)."""
    from medgen.chem.mol import parse_smiles
    from medgen.molecules.api import property_function

    fns = [property_function(name) for name in names]
    table = np.full((len(smiles), len(names)), np.nan)
    for k, s in enumerate(smiles):
        mol = parse_smiles(s) if s else None
        if mol is not None:
            table[k] = [float(fn(mol)) for fn in fns]  # type: ignore[misc]
    return table


# ------------------------------------------------------------------------------------ guidance


def guide(
    z: torch.Tensor,
    heads: Mapping[str, Any],
    targets: Mapping[str, Target],
    *,
    steps: int = STEPS,
    step_size: float = STEP_SIZE,
    prior_weight: float = PRIOR_WEIGHT,
    margin: float = MARGIN,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Latents ``z (B, L)`` moved toward the targets (see the module docstring); rows are
    independent. Works inside ``torch.inference_mode`` (``Trainer.predict``).

    With a fitted prior, ``z`` holds the standard normals ``eps`` and ``shift (B, L)``, ``scale
    (B, L, L)`` each row's component (:func:`medgen.molecules.sampling.draw_whitened`): the
    steps and the typical-set term act on ``eps``, the heads on ``shift + scale @ eps``, which
    is returned. Without them ``eps`` is ``z``."""
    radius = math.sqrt(z.shape[-1])

    def latent(eps: torch.Tensor) -> torch.Tensor:
        if shift is None or scale is None:
            return eps
        return (shift + (scale @ eps.to(scale.dtype)[..., None]).squeeze(-1)).to(eps.dtype)

    with torch.inference_mode(False), torch.enable_grad():
        eps = z.clone()  # a normal tensor, also when drawn in inference mode
        for _ in range(steps):
            eps.requires_grad_(True)
            loss = prior_weight * 0.5 * (eps.norm(dim=-1) - radius).pow(2)  # (B,)
            moved = latent(eps)
            for name, target in targets.items():
                head = heads[name]
                loss = loss + target.hinge(head(moved), float(head.std), margin)
            (grad,) = torch.autograd.grad(loss.sum(), eps)
            with torch.no_grad():
                norm = grad.norm(dim=-1, keepdim=True).clamp(min=1.0)
                eps = eps - (step_size * radius) * grad / norm
        with torch.no_grad():
            return latent(eps).detach()


@torch.no_grad()
def guided_decode(
    vae: Any,
    vocab: Any,
    record: Mapping[str, Any] | None,
    indices: Sequence[int],
    *,
    seed: int,
    temperature: float,
    condition: Any,
) -> list[str | None]:
    """Candidates ``indices`` of ``seed``: prior latents guided toward ``condition`` by the
    record's heads, decoded with each candidate's own noise (canonical SMILES, None if
    RDKit rejects the graph)."""
    from medgen.molecules.sampling import draw_whitened

    if len(indices) == 0:
        return []
    targets = parse_condition(condition)
    resolve_condition(condition, record)
    assert record is not None  # resolve_condition refuses a missing record
    device = next(vae.parameters()).device
    with torch.inference_mode(False):  # parameters made in inference mode cannot be differentiated
        heads = {name: head_from_record(record["heads"][name], device) for name in targets}
    was_training = vae.training
    vae.eval()
    try:
        eps, shift, scale, u = draw_whitened(vae, indices, seed, device=device)
        z = guide(eps, heads, targets, shift=shift, scale=scale)
        return vae.decode_smiles(z, vocab, temperature=temperature, uniforms=u)
    finally:
        vae.train(was_training)


# ------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Conditioned:
    """What a conditioned draw adds to its rows: per target property the RDKit values of the
    returned molecules, and the report for the summary (success rates, IntDiv, shortfall)."""

    values: dict[str, list[float]]
    report: dict[str, Any]


def select_targets(
    found: Mapping[int, str | None],
    n: int,
    condition: Any,
    *,
    draw: Callable[[list[int]], Mapping[int, str | None]],
    chance: Callable[[list[int]], list[str | None]],
    is_copy: Callable[[list[str | None]], Sequence[bool]] | None = None,
    heads: Mapping[str, Any] | None = None,
    budget_factor: int = BUDGET_FACTOR,
    batch_size: int = DRAW_BATCH,
):
    """The first ``n`` candidates of the index stream whose decoded molecule meets every target
    (RDKit values), drawing candidates beyond ``found`` with ``draw`` until ``n`` are found or
    ``budget_factor * n`` were looked at; ``is_copy`` (novel_only): drop training copies too.
    ``chance(indices)`` draws unguided prior samples for the chance rate. Returns
    ``(medgen.molecules.release.Selection, Conditioned)``."""
    from medgen.molecules.release import Selection

    targets = parse_condition(condition)
    budget = int(budget_factor) * n
    pool, kept = dict(found), cast(list[int], [])
    values: dict[str, list[float]] = {name: [] for name in targets}
    i = valid = met = copies = 0  # i: the next candidate of the stream to look at
    while len(kept) < n and i < budget:
        if i not in pool:
            pool.update(draw(list(range(i, min(budget, i + max(batch_size, 2 * (n - len(kept))))))))
            if i not in pool:
                raise RuntimeError(f"condition: draw() did not return candidate {i}")
        chunk: list[int] = []  # the drawn run of the stream from i
        while i + len(chunk) in pool and len(chunk) < batch_size and i + len(chunk) < budget:
            chunk.append(i + len(chunk))
        smiles = [pool[j] for j in chunk]
        table = property_table(smiles, list(targets))
        copy = list(is_copy(smiles)) if is_copy is not None else [False] * len(chunk)
        for k, j in enumerate(chunk):
            if len(kept) == n:
                break
            i = j + 1
            if not np.isfinite(table[k]).all():
                continue
            valid += 1
            if not all(t.met(float(v)) for t, v in zip(targets.values(), table[k], strict=True)):
                continue
            met += 1
            if copy[k]:
                copies += 1
                continue
            kept.append(j)
            for p, name in enumerate(targets):
                values[name].append(float(table[k, p]))
    smiles = [pool[j] for j in kept]
    report = _report(targets, n, smiles, i, budget, valid, met, chance, heads)
    if is_copy is not None:
        report["training_copies_dropped"] = copies
        if report["shortfall"] and copies:
            report["shortfall"] += f" ({copies} training copies were dropped: novel_only)"
    return Selection(kept, smiles, copies, i), Conditioned(values, report)


def _report(targets, n, smiles, candidates, budget, valid, met, chance, heads) -> dict[str, Any]:
    from medgen.chem.metrics import fraction_unique

    m = min(candidates, CHANCE_SAMPLES)
    prior = chance(list(range(m)))
    table = property_table(prior, list(targets))
    hits = sum(all(t.met(float(v)) for t, v in zip(targets.values(), row, strict=True))
               for row in table)  # fmt: skip
    intdiv, intdiv2 = internal_diversity(smiles)
    report: dict[str, Any] = {
        "targets": condition_record(targets),
        "n_requested": n,
        "n_found": len(smiles),
        "candidates": candidates,
        "budget": budget,
        "guided": {"success_rate": met / max(1, candidates),
                   "validity": valid / max(1, candidates)},
        "unguided": {"samples": m, "success_rate": hits / max(1, m),
                     "validity": float(np.isfinite(table).all(1).mean()) if m else 0.0},
        "uniqueness": fraction_unique(smiles),
        "intdiv": intdiv,
        "intdiv2": intdiv2,
        "shortfall": None,
    }  # fmt: skip
    if heads:
        report["heads_r2_heldout"] = {k: heads[k].get("r2_heldout") for k in targets if k in heads}
        report["heads_steer_r"] = {k: heads[k].get("steer_r") for k in targets if k in heads}
    report["guidance_helped"] = above_chance(met, candidates, hits, m)
    if len(smiles) < n:
        report["shortfall"] = (
            f"only {len(smiles)} of n={n} candidates met every target (RDKit values) within the "
            f"budget of {budget} candidates ({budget // n} x n); widen the targets or check "
            "the heads' held-out R^2"
        )
    guided, unguided = report["guided"]["success_rate"], report["unguided"]["success_rate"]
    log.info("condition %s: %d of n=%d found in %d candidates; guided success %.1f%%, "
             "unguided (chance) %.1f%%", ", ".join(f"{k}{v}" for k, v in report["targets"].items()),
             len(smiles), n, candidates, 100 * guided, 100 * unguided)  # fmt: skip
    if report["shortfall"]:
        log.warning("condition: %s", report["shortfall"])
    if not report["guidance_helped"]:
        steer = report.get("heads_steer_r") or {}
        why = ", ".join(f"{k} {v:.2f}" for k, v in steer.items() if v is not None)
        log.warning(
            "condition: guidance did not raise the success rate above chance (%.1f%% vs %.1f%%)%s;"
            " every molecule returned meets the targets (RDKit), selected from the draws",
            100 * guided, 100 * unguided,
            f": the heads barely steer this model (prior-draw correlation {why})" if why else "",
        )  # fmt: skip
    return report


def above_chance(hits: int, total: int, chance_hits: int, chance_total: int) -> bool:
    """Whether a success rate ``hits / total`` is above the chance rate ``chance_hits /
    chance_total`` by more than two standard errors of their difference (a two-proportion
    test); False when either count is 0."""
    if total == 0 or chance_total == 0:
        return False
    p, q = hits / total, chance_hits / chance_total
    pooled = (hits + chance_hits) / (total + chance_total)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / total + 1 / chance_total))
    return p - q > 2 * se


def internal_diversity(smiles: Sequence[str | None]) -> tuple[float | None, float | None]:
    """MOSES ``(IntDiv, IntDiv2)`` of the valid molecules (None when there are none)."""
    from medgen.chem.metrics import internal_diversities
    from medgen.chem.mol import parse_smiles
    from medgen.chem.similarity import packed_fingerprints

    mols = [m for m in (parse_smiles(s) for s in smiles if s) if m is not None]
    if not mols:
        return None, None
    return internal_diversities(packed_fingerprints(mols))


# ------------------------------------------------------------------------------------ the CLI


def training_smiles(checkpoint: Path) -> list[str]:
    """The training split of a checkpoint's run (its ``config.yaml`` data node, rebuilt)."""
    import hydra

    from medgen.molecules.release import _data_node, run_dir

    node = _data_node(run_dir(checkpoint))
    if node is None:
        raise UserError(f"--data is needed: the run dir of {checkpoint} holds no config.yaml "
                        "with its data (pass the training SMILES file)")  # fmt: skip
    dm = hydra.utils.instantiate(node)
    dm.setup("fit")
    return list(dm.train_smiles())


def add_heads(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    n: int = DEFAULT_N,
    seed: int = 0,
    properties: Sequence[str] = PROPERTIES,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit the heads of ``checkpoint`` on ``data`` (None: the run's training split) and write
    the checkpoint with them to ``out`` (atomically; never over an input). Returns the record."""
    from medgen.molecules.api import MoleculeVAE
    from medgen.utils.provenance import file_sha256

    file, out = check_new_checkpoint(checkpoint, out, data=data, overwrite=overwrite)
    if not 10 <= n:
        raise ConfigError("--n", n, "an integer >= 10")
    unknown = [p for p in properties if p not in PROPERTIES]
    if unknown or not properties:
        raise ConfigError("--properties", ",".join(properties), f"names from {PROPERTIES}")
    vae = MoleculeVAE.from_checkpoint(file)
    if data is None:
        smiles, source = training_smiles(file), "the run's training split"
    else:
        smiles, source = _read_smiles(Path(data).expanduser())
    record = fit_heads(vae, smiles, properties=properties, n=n, seed=seed, source=source)
    record["fitted_on"]["checkpoint_sha256"] = file_sha256(file)
    write_with_record(file, out, KEY, record)
    return record


def check_new_checkpoint(
    checkpoint: str | Path, out: str | Path, *, data: str | Path | None, overwrite: bool
) -> tuple[Path, Path]:
    """``(checkpoint file, out)`` for a command that writes a copy of ``checkpoint`` with a
    record added: ``out`` must be a new ``.ckpt`` (or ``overwrite``) in an existing folder and
    neither the checkpoint nor the ``data`` file (a user mistake naming ``--out`` otherwise)."""
    from medgen.utils.checkpoint import resolve_checkpoint

    file = resolve_checkpoint(checkpoint)
    out = Path(out).expanduser()
    if not out.name.endswith(".ckpt"):
        raise ConfigError("--out", str(out), "a .ckpt file")
    inputs = [file] + ([Path(data).expanduser()] if data is not None else [])
    if any(out.resolve() == p.resolve() for p in inputs):
        raise UserError(f"--out {out} is an input; write the new checkpoint elsewhere")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"--out {out} exists; choose another path or pass --overwrite")
    if not out.parent.is_dir():
        raise MissingFileError(f"--out {out}: the folder {out.parent} does not exist")
    return file, out


def write_with_record(file: Path, out: Path, key: str, record: Any) -> None:
    """Write checkpoint ``file`` as stored (a slimmed file stays slimmed) plus ``record`` under
    ``key`` to ``out``, atomically, and only once the copy loads with ``weights_only=True``."""
    from medgen.utils.atomic import atomic_path
    from medgen.utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(file)
    ckpt[key] = record
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # it must load before it lands


def _read_smiles(path: Path) -> tuple[list[str], str]:
    from medgen.chem.io import read_molecules

    if not path.is_file():
        raise MissingFileError(f"--data {path}: no such file")
    smiles = [s for chunk in read_molecules(path) for s in chunk["smiles"].tolist() if s]
    if not smiles:
        raise InputFileError(f"--data {path}: no SMILES in the file")
    return smiles, path.name


def r2_table(record: Mapping[str, Any]) -> str:
    """The heads' fit as a text table (property, R^2 held out, R^2 train, molecules)."""
    lines = [f"{'property':<10}{'R2 held-out':>12}{'R2 train':>10}{'n_fit':>8}{'n_heldout':>11}"
             f"{'steer r':>9}"]  # fmt: skip
    weak = []
    for name, entry in record["heads"].items():
        steer = entry.get("steer_r")
        lines.append(f"{name:<10}{entry.get('r2_heldout', float('nan')):>12.3f}"
                     f"{entry.get('r2_train', float('nan')):>10.3f}{entry.get('n_fit', 0):>8d}"
                     f"{entry.get('n_heldout', 0):>11d}"
                     f"{'n/a' if steer is None else format(steer, '.3f'):>9}")  # fmt: skip
        if steer is not None and steer < WEAK_STEER:
            weak.append(name)
    lines.append(
        "steer r: correlation over prior draws between head(z) and the RDKit value of the "
        "molecule decoded from z"
    )
    if weak:
        lines.append(f"warning: {', '.join(weak)}: steer r < {WEAK_STEER}; guidance along "
                     "these heads will not beat chance (the decoder, not z, decides)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medgen.molecules.conditioning",
        description="fit latent property heads (qed, sa, logp) and store them in a new checkpoint",
    )
    parser.add_argument("checkpoint", help="a graph VAE checkpoint (.ckpt) or run dir")
    parser.add_argument("--out", required=True, help="the new checkpoint (.ckpt)")
    parser.add_argument("--data", help="SMILES file to fit on (default: the run's training set)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="molecules to fit on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and split")
    parser.add_argument("--properties", default=",".join(PROPERTIES), help="comma-separated")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    from medgen.utils.logging import configure_logging

    configure_logging()
    try:
        record = add_heads(
            args.checkpoint, args.out, data=args.data, n=args.n, seed=args.seed,
            properties=[p.strip() for p in args.properties.split(",") if p.strip()],
            overwrite=args.overwrite,
        )  # fmt: skip
    except UserError as err:
        text = " ".join(str(err).split())
        print(f"medgen.molecules.conditioning: error: {text}", file=sys.stderr)
        return 2
    print(r2_table(record))
    print(f"wrote {args.out} ({record['fitted_on']['molecules']} molecules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
