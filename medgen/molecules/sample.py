"""``medgen sample`` for graph VAE checkpoints: molecules to ``.csv`` or ``.sdf`` with provenance.

Molecule ``i`` of seed ``s`` is the same whatever ``batch_size`` (see :mod:`medgen.molecules.api`).
The file is written atomically; a JSON sidecar ``<out>.json`` records the checkpoint's sha256, the
seed, temperature, count, summary metrics and medgen's provenance. Writing over an ``out`` made with
other settings (checkpoint, seed, temperature or n) is refused unless ``overwrite=true``; a corrupt
sidecar is named in the error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medgen.errors import OutputExistsError, UserError
from medgen.utils.logging import get_logger

log = get_logger(__name__)


def write_molecules(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write rows (``index``, ``seed``, ``smiles``, ...) as CSV or SDF (fields as SD tags)."""
    import pandas as pd
    from rdkit import Chem

    from medgen.utils.atomic import atomic_path, atomic_write_text

    path = Path(path)
    name = path.name.lower()
    if name.endswith(".csv"):
        return atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    if name.endswith(".sdf"):
        with atomic_path(path) as tmp:
            writer = Chem.SDWriter(str(tmp))
            for row in rows:
                mol = Chem.MolFromSmiles(row["smiles"]) if row["smiles"] else None
                if mol is None:
                    continue
                mol.SetProp("_Name", f"sample_{row['index']:06d}")
                for key, value in row.items():
                    mol.SetProp(key, str(value))
                writer.write(mol)
            writer.close()
        return path
    raise UserError(f"out={path}: molecules are written to a .csv or .sdf file")


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of an earlier run ({} when absent); ``ValueError`` naming a corrupt one."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(
            f"sidecar {path} is corrupt ({err}); delete it or set overwrite=true"
        ) from err
    if not isinstance(data, dict):
        raise UserError(f"sidecar {path} is corrupt (not a JSON object); set overwrite=true")
    return data


def sample_from_config(cfg, ckpt_file: str | os.PathLike) -> dict[str, Any]:
    """Sample ``cfg.n`` molecules from ``ckpt_file`` into ``cfg.out``; returns a summary dict.

    Keys read: ``n``, ``seed``, ``temperature``, ``batch_size``, ``out``, ``overwrite``.
    """
    from medgen.chem.metrics import fraction_unique, fraction_valid
    from medgen.molecules.api import MoleculeVAE
    from medgen.molecules.vae import check_temperature
    from medgen.utils.atomic import atomic_write_json
    from medgen.utils.provenance import file_sha256, provenance

    out = Path(str(cfg.out)).expanduser()
    n, seed = int(cfg.n), int(cfg.seed)
    temperature = check_temperature(cfg.get("temperature", 1.0))
    batch_size = max(1, int(cfg.get("batch_size", 1000)))
    sidecar = out.with_name(out.name + ".json")
    ckpt_sha = file_sha256(ckpt_file)
    settings = {"checkpoint_sha256": ckpt_sha, "seed": seed, "temperature": temperature, "n": n}
    if out.exists() and not cfg.get("overwrite", False):
        previous = _read_sidecar(sidecar)
        changed = {k: previous.get(k) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            wanted = ", ".join(f"{k}={settings[k]!r} (was {v!r})" for k, v in changed.items())
            raise OutputExistsError(
                f"{out} exists and was made with other sampling settings: {wanted}; "
                "choose another out or set overwrite=true"
            )
    vae = MoleculeVAE.from_checkpoint(ckpt_file)
    # sample.yaml's batch 4 suits volumes, not molecules; the batch size never changes the result
    smiles = vae.sample(n, seed=seed, temperature=temperature, batch_size=max(batch_size, 256))
    rows = [
        {"index": i, "seed": seed, "smiles": s or "", "valid": s is not None}
        for i, s in enumerate(smiles)
    ]
    write_molecules(out, rows)
    summary = {
        "out": str(out),
        "n": n,
        "seed": seed,
        "temperature": temperature,
        "validity": fraction_valid(smiles),
        "uniqueness": fraction_unique(smiles),
        "checkpoint": str(ckpt_file),
        "checkpoint_sha256": ckpt_sha,
    }
    atomic_write_json(sidecar, {**summary, "provenance": provenance(cfg, seed=seed)})
    log.info(
        "wrote %d molecules to %s (validity %.3f, uniqueness %.3f)",
        n,
        out,
        summary["validity"],
        summary["uniqueness"],
    )
    return summary
