"""The one owner of a molecule sampling output: a ``.csv`` or ``.sdf`` file and what sits beside it.

Layout for ``out = mols.csv``::

    mols.csv                  index, seed, smiles, valid, dualuse_alerts: one row per molecule
                              0..n-1, in order, after the ``# medgen-synthetic`` mark lines
    mols.csv.json             sidecar: checkpoint sha256, seed, temperature, n, validity,
                              uniqueness, memorization, dual-use counts, the mark, provenance
                              (written last: it marks mols.csv complete)
    mols.CARD.md, .card.json  the molecule card (:mod:`medgen.molecules.release`)
    mols.csv.png              grid of the first valid molecules (``preview=true``)
    .mols.csv.parts/          while sampling: plan.json (the settings) and one JSON part per batch,
                              part-r<rank>-<first index>.json, each written atomically

An SDF ``out`` holds the valid molecules only (``_Name`` ``sample_000012``, the other columns as
SD tags). A rerun into the same ``out`` with the same checkpoint, seed, temperature and ``n``
resumes: the parts already written are kept and only the missing molecules are drawn (a complete
``out`` draws nothing). Other settings are refused (:class:`~medgen.errors.OutputExistsError`
naming what changed) unless ``overwrite=true``. :meth:`MoleculeCohort.finalize` merges the parts
in index order through :class:`medgen.chem.io.MoleculeWriter` (atomically) and removes them.

Release (:mod:`medgen.molecules.release`, ``docs/release.md``): the file carries the synthetic
mark (:mod:`medgen.marking`); training copies are counted against the checkpoint's training set
or, with ``novel_only``, dropped (the rows are then the first ``n`` novel molecules of the index
stream and keep their stream index); every molecule is screened for dual-use alerts
(:mod:`medgen.chem.dualuse`) unless ``dualuse=false``; with ``share`` the sidecar and the card
name no path or host.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from medgen.errors import ConfigError, MissingFileError, OutputExistsError, UserError
from medgen.generation import Generated
from medgen.marking import release_options
from medgen.molecules.release import molecule_options
from medgen.records import SampleSettings
from medgen.utils.atomic import atomic_path, atomic_write_json, remove_stale_temporaries
from medgen.utils.logging import get_logger
from medgen.utils.provenance import file_sha256, provenance

log = get_logger(__name__)

SUFFIXES = (".csv", ".sdf")
COLUMNS = ["index", "seed", "smiles", "valid"]
PLAN = "plan.json"
PREVIEW_SIZE = 24  # molecules in the preview grid
_CHUNK = 10_000  # rows per MoleculeWriter chunk
_DRAW_BATCH = 1000  # novel_only: molecules per extra draw


class MoleculeCohort:
    """Plans, resumes, writes and finalizes ``n`` molecules of one checkpoint and settings.

    Args:
        out: the ``.csv`` or ``.sdf`` file to write (its folder must exist).
        settings: resolved sampling settings (``seed`` and ``temperature`` are used).
        checkpoint: the checkpoint file the molecules come from (its sha256 is recorded).
        generator: the generator that draws them (``novel_only`` draws more at finalize; None:
            loaded from ``checkpoint`` when needed).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        settings: SampleSettings,
        checkpoint: Path,
        generator: Any = None,
    ):
        out = Path(out).expanduser()
        if out.is_dir() or not out.name.lower().endswith(SUFFIXES):
            raise ConfigError("out", str(out), "a .csv or .sdf file for a molecule model")
        if not out.parent.is_dir():
            raise MissingFileError(f"out={out}: the folder {out.parent} does not exist")
        self.out = out
        self.settings = settings
        self.checkpoint = Path(checkpoint)
        self.checkpoint_sha256 = file_sha256(checkpoint)
        self.sidecar = out.with_name(out.name + ".json")
        self.preview = out.with_name(out.name + ".png")
        self.parts = out.with_name(f".{out.name}.parts")
        self.n: int | None = None
        self._fresh = False  # overwrite=true: what out and its parts hold does not count
        self.options = molecule_options(settings)
        self._generator: Any = generator  # novel_only's extra draws

    # ------------------------------------------------------------------------------ identity
    def identity(self, n: int | None = None) -> dict[str, Any]:
        """The settings an existing ``out`` (or unfinished parts) must match to be reused."""
        n = self.n if n is None else n
        if n is None:
            raise RuntimeError("MoleculeCohort.check(n) must run first")
        record: dict[str, Any] = {
            "checkpoint_sha256": self.checkpoint_sha256,
            "seed": int(self.settings.seed),
            "temperature": float(self.settings.temperature),
            "n": int(n),
        }
        # release settings that change the file; defaults stay out (older outputs still match)
        if self.options.novel_only:
            record["novel_only"] = True
        if not self.options.dualuse:
            record["dualuse"] = False
        if release_options(self.settings).share:
            record["share"] = True
        if self.settings.condition is not None:  # property targets (conditioning)
            record["condition"] = dict(self.settings.condition)  # type: ignore[arg-type]
        # the latent prior drawn from; outputs made before priors existed read as "normal"
        record["latent_prior"] = str(self.settings.extra.get("latent_prior", "normal"))
        return record

    def check(self, n: int, *, overwrite: bool) -> None:
        """Refuse an ``out`` (or unfinished parts) made with other settings unless ``overwrite``.

        Read only; runs on every rank before any work.
        """
        self.n, self._fresh = int(n), bool(overwrite)
        if overwrite:
            return
        want = self.identity()
        if (self.parts / PLAN).is_file():  # an unfinished run: resumed with its own settings only
            _refuse_other(read_record(self.parts / PLAN), want, f"{self.parts} holds a run")
        elif self.out.exists():
            _refuse_other(read_record(self.sidecar), want, f"{self.out} exists and was")

    def prepare(self, *, overwrite: bool) -> None:
        """Clear parts made with other settings (or all, given ``overwrite``); record the plan."""
        want = self.identity()
        plan = self.parts / PLAN
        if self.parts.exists() and (overwrite or not self._plan_matches()):
            shutil.rmtree(self.parts)
        self.parts.mkdir(exist_ok=True)
        if removed := remove_stale_temporaries(self.parts):
            log.info("removed %d temporary file(s) of an interrupted run", len(removed))
        if not plan.is_file():
            atomic_write_json(plan, want)

    # ------------------------------------------------------------------------------ resume
    def done(self) -> set[int]:
        """Indices already drawn: all of them for a complete ``out``, else those in the parts."""
        if self._complete():
            return set(range(self.n or 0))
        return set(self._read_parts())

    def write(self, batch: Generated, *, rank: int, world_size: int) -> list[int]:
        """Store one batch as a part file (atomically); returns its indices."""
        if len(batch) == 0:
            return []
        name = f"part-r{rank:04d}-{batch.indices[0]:09d}.json"
        atomic_write_json(self.parts / name, {"indices": batch.indices, "smiles": batch.items})
        return list(batch.indices)

    # ------------------------------------------------------------------------------ finalize
    def finalize(self, n: int, *, preview: bool) -> dict[str, Any]:
        """Merge the parts into ``out`` in index order, write the sidecar (and the grid), remove
        the parts; returns the summary recorded in the sidecar (without provenance)."""
        from rdkit import Chem

        from medgen.chem.metrics import fraction_unique
        from medgen.chem.mol import parse_smiles

        if self._complete() and not self._part_files():
            shutil.rmtree(self.parts, ignore_errors=True)
            log.info("%s already holds these %d molecules; nothing drawn", self.out, n)
            return {k: v for k, v in read_record(self.sidecar).items() if k != "provenance"}
        found = self._read_parts()
        missing = [i for i in range(n) if i not in found]
        if missing:
            raise RuntimeError(
                f"{self.parts} lacks {len(missing)} molecule(s) (first: {missing[:5]}); "
                "rerun the same command to draw them"
            )
        from medgen.chem.dualuse import counts_from_column, dualuse_column_of_mols
        from medgen.marking import assert_shareable
        from medgen.marking import provenance as marking_record
        from medgen.molecules.release import (
            molecule_card,
            novelty_report,
            property_comparison,
            public_settings,
            select,
            write_molecule_card,
        )

        share = release_options(self.settings).share
        train, reason = self._training_set()
        conditioned = None
        if self.settings.condition is not None:
            chosen, conditioned = self._select_targets(found, n, train)
        else:
            chosen = select(found, n, train=train, novel_only=self.options.novel_only,
                            draw=self._draw_more, batch_size=_DRAW_BATCH)  # fmt: skip
        smiles = chosen.smiles
        mols = [parse_smiles(s) for s in smiles]  # once, for validity, uniqueness and alerts
        alerts = dualuse_column_of_mols(mols) if self.options.dualuse else None
        canonical = [Chem.MolToSmiles(m) for m in mols if m is not None]
        mark = marking_record(
            "molecules", checkpoint_sha256=self.checkpoint_sha256,
            generator=self._generator_path(), settings=public_settings(self.settings),
            extra={"n": n},
        )  # fmt: skip
        values = conditioned.values if conditioned is not None else None
        self._write_file(chosen.indices, smiles, alerts, mark, values)
        summary: dict[str, Any] = {
            "out": str(self.out),
            "n": n,
            "seed": int(self.settings.seed),
            "temperature": float(self.settings.temperature),
            "validity": len(canonical) / len(mols) if mols else 0.0,  # as fraction_valid
            "uniqueness": fraction_unique(canonical, canonical=True),
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            **self.identity(n),
        }
        memo = novelty_report(chosen, train, novel_only=self.options.novel_only, reason=reason)
        summary["memorization"] = memo
        if conditioned is not None:  # n asked for; n_found: rows written (all meet the targets)
            summary.update(n_found=len(smiles), conditioning=conditioned.report)
        if alerts is not None:
            summary["dualuse"] = counts_from_column(alerts).to_dict()
        if preview and (image := molecule_grid([s for s in smiles if s], PREVIEW_SIZE)):
            save_png(image, self.preview)
            summary["preview"] = str(self.preview)
        card = molecule_card(
            file_name=self.out.name, marking=mark, train=train,
            summary=summary if conditioned is None else {**summary, "n": len(smiles)},
            properties=property_comparison(smiles, train), dualuse=summary.get("dualuse"),
        )  # fmt: skip
        md, _ = write_molecule_card(self.out, card, share=share)
        summary["card"] = str(md)
        if share:  # file names only, the mark instead of the local provenance (host, commit)
            sidecar = {k: v for k, v in summary.items() if k != "checkpoint"}
            sidecar.update({k: Path(summary[k]).name for k in ("out", "preview", "card")
                            if k in summary})  # fmt: skip
            sidecar["marking"] = mark
            assert_shareable(sidecar, f"{self.sidecar}")
        else:
            settings = self.settings.to_dict()  # config_hash: of these settings
            record = provenance(settings, seed=summary["seed"], sample_settings=settings)
            sidecar = {**summary, "marking": mark, "provenance": record}
        atomic_write_json(self.sidecar, sidecar)
        shutil.rmtree(self.parts, ignore_errors=True)
        log.info(
            "wrote %d molecules to %s (validity %.3f, uniqueness %.3f, novelty %s, dual-use "
            "alerts %s)", len(smiles), self.out, summary["validity"], summary["uniqueness"],
            memo.get("novelty"), summary.get("dualuse", {}).get("flagged", "off"),
        )  # fmt: skip
        if self.options.novel_only:
            log.info("novel_only: %d training copies dropped", chosen.copies)
        return summary

    def _training_set(self) -> tuple[Any, str | None]:
        """``(TrainingSet or None, why none)``; with ``novel_only`` a missing one is an error."""
        from medgen.molecules.release import find_training_set, require_training_set

        try:
            train = find_training_set(self.checkpoint, self.options.train_smiles)
        except (UserError, OSError) as err:
            if self.options.novel_only:
                raise
            log.warning("no novelty report: the training set is unreadable: %s", err)
            return None, f"training set unreadable ({type(err).__name__})"
        if train is None:
            if self.options.novel_only:
                require_training_set(self.checkpoint, self.options.train_smiles)  # raises
            log.info("no novelty report: no training-set record beside %s", self.checkpoint)
            return None, "no training-set record in the checkpoint's run dir"
        return train, None

    def _select_targets(self, found: dict[int, str | None], n: int, train: Any) -> Any:
        """``condition``: the first n candidates meeting every target (novel ones only with
        ``novel_only``), and the unguided chance rate (:mod:`medgen.molecules.conditioning`)."""
        from medgen.generation import load_generator
        from medgen.molecules.conditioning import select_targets

        if self._generator is None:
            self._generator, _ = load_generator(self.checkpoint)
        unguided = self.settings.replace(condition=None)
        copy = train.contains if self.options.novel_only and train is not None else None
        return select_targets(
            found, n, self.settings.condition, draw=self._draw_more, is_copy=copy,
            chance=lambda idx: self._generator.generate(idx, unguided).items,
            heads=(getattr(self._generator, "property_heads", None) or {}).get("heads"),
        )  # fmt: skip

    def _draw_more(self, indices: list[int]) -> dict[int, str | None]:
        """novel_only: draw molecules ``indices`` (>= n) here, keeping them as parts (resume)."""
        from medgen.generation import load_generator

        if self._generator is None:
            self._generator, _ = load_generator(self.checkpoint)
        batch = self._generator.generate(indices, self.settings)
        self.write(batch, rank=0, world_size=1)
        return dict(zip(batch.indices, batch.items, strict=True))

    def _generator_path(self) -> str:
        """The generator's class path, as its checkpoint records it."""
        from medgen.generation import module_path
        from medgen.utils.checkpoint import load_checkpoint

        named = release_options(self.settings).generator
        if named is None and self._generator is not None:
            named = f"{type(self._generator).__module__}.{type(self._generator).__qualname__}"
        return named or module_path(load_checkpoint(self.checkpoint)) or "unknown"

    def _write_file(
        self,
        indices: list[int],
        smiles: list[str | None],
        alerts: list[str | None] | None,
        mark: dict[str, Any],
        values: dict[str, list[float]] | None = None,
    ) -> None:
        import pandas as pd

        from medgen.chem.dualuse import COLUMN
        from medgen.chem.io import MoleculeWriter

        n, seed = len(smiles), int(self.settings.seed)
        frame = pd.DataFrame(
            {
                "index": indices,
                "seed": [seed] * n,
                "smiles": [s or "" for s in smiles],
                "valid": [s is not None for s in smiles],
            },
            columns=COLUMNS,
        )
        for name, column in (values or {}).items():  # conditioned: the RDKit property values
            frame[name] = column
        if alerts is not None:
            frame[COLUMN] = [a or "" for a in alerts]
        if self.out.name.lower().endswith(".sdf"):  # the record title; invalid rows are left out
            frame["name"] = [f"sample_{i:06d}" for i in indices]
        with MoleculeWriter(self.out, mark=mark) as writer:
            for lo in range(0, max(n, 1), _CHUNK):
                writer.write(frame.iloc[lo : lo + _CHUNK])

    # ------------------------------------------------------------------------------ helpers
    def _complete(self) -> bool:
        """Whether ``out`` holds exactly this run (its sidecar, written last, matches)."""
        if self._fresh or not self.out.is_file() or not self.sidecar.is_file():
            return False
        try:
            previous = read_record(self.sidecar)
        except UserError:
            return False
        previous = {**_IDENTITY_DEFAULTS, **previous}
        return all(previous.get(k) == v for k, v in self.identity().items())

    def _plan_matches(self) -> bool:
        try:
            plan = read_record(self.parts / PLAN)
        except UserError:
            return False
        return {**_IDENTITY_DEFAULTS, **plan} == self.identity()

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-r*.json")) if self.parts.is_dir() else []

    def _read_parts(self) -> dict[int, str | None]:
        """``index -> SMILES`` of the parts written with these settings (none if the plan differs);
        an unreadable part is skipped (its molecules are drawn again)."""
        if not self._plan_matches():
            return {}
        found: dict[int, str | None] = {}
        for path in self._part_files():
            try:
                part = json.loads(path.read_text())
                pairs = zip(part["indices"], part["smiles"], strict=True)
                found.update({int(i): s for i, s in pairs})
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("unreadable part %s (its molecules are drawn again): %s", path, err)
        return found


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object written by a cohort ({} when absent); a corrupt one is a ``UserError``."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt ({err}); delete it or set overwrite=true") from err
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupt (not a JSON object); delete it or set overwrite=true")
    return data


#: identity keys that older outputs lack, and what they meant then
_IDENTITY_DEFAULTS = {"latent_prior": "normal"}


def _refuse_other(previous: dict[str, Any], want: dict[str, Any], what: str) -> None:
    before = {**_IDENTITY_DEFAULTS, **previous}
    changed = {k: before.get(k) for k, v in want.items() if before.get(k) != v}
    if changed:
        wanted = ", ".join(f"{k}={want[k]!r} (was {v!r})" for k, v in changed.items())
        raise OutputExistsError(
            f"{what} made with other sampling settings: {wanted}; "
            "choose another out or set overwrite=true"
        )


def molecule_grid(smiles: list[str], limit: int = PREVIEW_SIZE):
    """A PIL image of the first ``limit`` molecules of ``smiles`` (6 per row), each with its
    SMILES and QED under it, or None if none parses."""
    from rdkit.Chem import Draw

    from medgen.chem.mol import parse_smiles
    from medgen.chem.properties import qed

    pairs = [(m, s) for s in smiles[:limit] if (m := parse_smiles(s)) is not None]
    if not pairs:
        return None
    mols = [m for m, _ in pairs]
    legends = [f"{_short(s)}\nQED {qed(m):.2f}" for m, s in pairs]
    return Draw.MolsToGridImage(mols, molsPerRow=6, subImgSize=(240, 200), legends=legends)


def _short(smiles: str, width: int = 34) -> str:
    """A SMILES cut to ``width`` characters for a legend."""
    return smiles if len(smiles) <= width else smiles[: width - 1] + "…"


def save_png(image, path: Path) -> Path:
    """Save a PIL image as PNG, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
