"""``GraphVAEModule``: the graph VAE in Lightning (ELBO, KL annealing) and a medgen generator.

The network is a ``model.network`` node (``_target_: medgen.molecules.vae.GraphVAE`` and its sizes)
and the optimizer a ``model.optimizer`` node (``_partial_: true``), both kept as plain dicts and
built with ``hydra.utils.instantiate``. The network's vocabulary capacities and ``max_atoms`` come
from the data: in ``setup()`` from the datamodule when ``vocabulary`` is not given, then stored in
the hyperparameters (a plain list of tokens), so a checkpoint rebuilds the model without the data
and loads with ``torch.load(weights_only=True)`` (:meth:`GraphVAEModule.from_checkpoint`).

As a :class:`medgen.generation.Generator` it draws molecule ``i`` of seed ``s`` from
``sample_generator(s, i)`` only (:mod:`medgen.molecules.sampling`) and writes them through a
:class:`~medgen.molecules.cohort.MoleculeCohort`. Validation-time prior samples and
reconstruction accuracy are :class:`medgen.molecules.callbacks.MoleculeSampling`'s work.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytorch_lightning as pl
import torch

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.generation import Generated, Output
from medgen.molecules.graph import Vocabulary
from medgen.molecules.prior import KEY as PRIOR_KEY
from medgen.molecules.prior import LatentPrior
from medgen.molecules.sampling import decode_indices, latent_prior_choice
from medgen.molecules.vae import DECODERS, GraphVAE, check_temperature
from medgen.records import SampleSettings
from medgen.utils.logging import get_logger
from medgen.utils.validate import check_arguments, check_value

if TYPE_CHECKING:
    from medgen.molecules.cohort import MoleculeCohort

log = get_logger(__name__)

KIND = "graph_vae"
NETWORK_TARGET = "medgen.molecules.vae.GraphVAE"
NETWORK = {"_target_": NETWORK_TARGET, "latent_dim": 56, "hidden_dim": 256, "encoder_layers": 3,
           "pair_dim": 64, "decoder": "graph"}  # fmt: skip
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.0}
# filled in from the data when the network is built, never set in the config
FROM_DATA = ("capacity", "max_atoms", "masks", "condition_dim", "condition_table",
             "condition_mean", "condition_std", "stereo")  # fmt: skip
# training molecules whose property rows a conditional model keeps as the prior of its condition
CONDITION_TABLE_ROWS = 5000
# 2: graph-aware decoder (medgen.molecules.decoder) and learned chemistry masks; checkpoints
# without a version are version 1 and load with the sequence decoder they were trained with
MODEL_VERSION = 2
# chemistry masks are learned from at most this many training molecules (about 2 min on a core;
# masks from a subset forbid more, never less, than masks from the whole split)
MASK_SAMPLE = 200_000

_LIMITS: dict[str, dict[str, float]] = {
    "max_atoms": {"ge": 2},
    "beta": {"ge": 0.0},
    "kl_start_step": {"ge": 0},
    "kl_warmup_steps": {"ge": 0},
    "kl_warmup_fraction": {"ge": 0.0, "le": 1.0},
    "free_bits": {"ge": 0.0},
    "lr_warmup_steps": {"ge": 0},
    "lr_final_ratio": {"ge": 0.0, "le": 1.0},
}
# learning-rate schedules over the run (model.lr_schedule)
LR_SCHEDULES = ("constant", "cosine")
_NETWORK_LIMITS = {k: {"ge": 1} for k in ("latent_dim", "hidden_dim", "encoder_layers", "pair_dim")}
_OPTIMIZER_LIMITS = {"lr": {"gt": 0.0}, "weight_decay": {"ge": 0.0}}


class GraphVAEModule(pl.LightningModule):
    """Graph VAE trained on the ELBO ``recon + beta_t * KL`` (nats per molecule).

    ``beta_t`` rises linearly from 0 at ``kl_start_step`` to ``beta`` over ``kl_warmup_steps``
    (Bowman et al. 2016, "Generating Sentences from a Continuous Space"). ``val/loss`` is the full
    negative ELBO (``beta = 1``, z sampled), comparable across epochs whatever the schedule.

    Args:
        network: ``_target_`` node of the network (default :class:`~medgen.molecules.vae.GraphVAE`
            with ``latent_dim``, ``hidden_dim``, ``encoder_layers``, ``pair_dim``; keys given
            without ``_target_`` override those defaults). ``capacity`` and ``max_atoms`` are the
            data's.
        optimizer: ``_target_`` node of the optimizer factory (``_partial_``; default AdamW with
            ``lr`` 1e-3, ``weight_decay`` 0); it receives the network's parameters.
        vocabulary: atom-type tokens (None: taken from the datamodule in ``setup``).
        max_atoms: largest molecule the decoder builds (None: the data's largest).
        beta, kl_start_step, kl_warmup_steps: KL weight schedule.
        kl_warmup_fraction: when set, the warm-up lasts this share of the run's optimizer steps
            (``trainer.estimated_stepping_batches``: ``max_steps`` or ``max_epochs``), so a recipe
            cut short still reaches ``beta``; ``kl_warmup_steps`` is used where the length of the
            run is unknown (``max_time`` only).
        learn_masks: learn chemistry masks (:class:`~medgen.molecules.masks.ChemistryMasks`) from
            the training split for the graph decoder; False: valence masks only.
        masks: learned masks as plain lists (set from the data and stored in the checkpoint).
        free_bits: KL floor per latent dimension in nats (batch mean); 0 = plain ELBO. Counters
            posterior collapse (the decoder ignoring ``z``); ``val/loss`` stays the plain ELBO.
        conditions: RDKit properties (``qed``, ``sa``, ``logp``) the decoder is conditioned on
            (a conditional VAE, see :class:`~medgen.molecules.vae.GraphVAE`); the data must
            compute the same (``data.condition_properties``). ``medgen sample condition=...``
            then draws each molecule's condition from training molecules that meet the targets.
        condition_stats: ``{"names", "mean", "std", "table"}`` of the training split (set from
            the data: ``table`` holds the raw property rows of up to 5,000 training molecules).
        init_from: a checkpoint (``pretrained:<name>``, a file or run dir) whose weights,
            vocabulary, masks and network sizes the model starts from (fine-tuning); the
            condition layer, new in a conditional model, starts at zero, and so does a stereo
            head new to it.
        stereo: learn and sample stereochemistry (:mod:`medgen.molecules.stereo`); None: as the
            data (``data.stereo``), recorded in the checkpoint.
        lr_schedule: ``constant`` or ``cosine``: the learning rate falls along a half cosine from
            the optimizer's ``lr`` to ``lr_final_ratio * lr`` over the run, whose progress is the
            larger of the share of its steps done (``max_steps`` or ``max_epochs``) and the share
            of its ``max_time`` spent (Lightning's Timer, resumed with the run), so a run stopped
            by its time limit ends annealed. A time-limited schedule depends on the machine's
            speed, not only on the seed.
        lr_warmup_steps: linear warm-up of the learning rate from 0 over these optimizer steps
            (both schedules; counted from the run's first step, also in a fine-tune).
        lr_final_ratio: the cosine's last learning rate as a share of ``lr``.
    """

    output: ClassVar[Output] = Output.MOLECULES
    data_kind: ClassVar[str] = "molecules"  # what it trains on (checked against the data's)
    # molecules per decoder pass when `medgen sample batch_size=null` (~2,000 valid/s on a core)
    default_batch_size: ClassVar[int] = 1000

    def __init__(
        self,
        *,
        network: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        vocabulary: list[str] | None = None,
        max_atoms: int | None = None,
        beta: float = 1.0,
        kl_start_step: int = 0,
        kl_warmup_steps: int = 5000,
        kl_warmup_fraction: float | None = None,
        free_bits: float = 0.0,
        learn_masks: bool = True,
        masks: dict[str, Any] | None = None,
        conditions: list[str] | None = None,
        condition_stats: dict[str, Any] | None = None,
        init_from: str | None = None,
        stereo: bool | None = None,
        lr_schedule: str = "constant",
        lr_warmup_steps: int = 0,
        lr_final_ratio: float = 0.05,
    ):
        super().__init__()
        args = dict(vocabulary=vocabulary, max_atoms=max_atoms, beta=beta,
                    kl_start_step=kl_start_step, kl_warmup_steps=kl_warmup_steps,
                    kl_warmup_fraction=kl_warmup_fraction, free_bits=free_bits,
                    learn_masks=learn_masks, lr_warmup_steps=lr_warmup_steps,
                    lr_final_ratio=lr_final_ratio)  # fmt: skip
        check_arguments(GraphVAEModule.__init__, args, prefix="model.", limits=_LIMITS)
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError("model.lr_schedule", lr_schedule, f"one of {list(LR_SCHEDULES)}")
        hp: dict[str, Any] = {"network": checked_network(network)}
        hp.update(optimizer=checked_optimizer(optimizer), **args)
        hp.update(vocabulary=None if vocabulary is None else list(vocabulary))
        hp.update(kind=KIND, module=f"{type(self).__module__}.{type(self).__qualname__}")
        hp.update(masks=None if masks is None else dict(masks), model_version=MODEL_VERSION)
        stats = None if condition_stats is None else dict(condition_stats)
        hp.update(conditions=checked_conditions(conditions), init_from=init_from,
                  condition_stats=stats)  # fmt: skip
        hp.update(stereo=None if stereo is None else bool(stereo), lr_schedule=lr_schedule)
        self.save_hyperparameters(hp)
        self.vae: GraphVAE | None = None
        self.vocab: Vocabulary | None = None
        self._warmup_steps: int | None = None
        self._run_steps: float | None = None
        self._no_length_warned = False
        # the checkpoint's `property_heads` record (medgen.molecules.conditioning), if any
        self.property_heads: dict[str, Any] | None = None
        if vocabulary is not None and max_atoms is not None:
            self.build(vocabulary, max_atoms, masks)

    # ------------------------------------------------------------------------------------------
    def build(
        self, vocabulary: Sequence[str], max_atoms: int, masks: Mapping[str, Any] | None = None
    ) -> None:
        """Create the network for a vocabulary and learned masks (plain, see
        :meth:`ChemistryMasks.to_plain`; None: valence only); records all in the hyperparameters."""
        import hydra

        from medgen.molecules.masks import ChemistryMasks

        self.vocab = Vocabulary(vocabulary)
        self.hparams["vocabulary"] = list(self.vocab.tokens)
        self.hparams["max_atoms"] = int(max_atoms)
        self.hparams["masks"] = None if masks is None else dict(masks)
        node = dict(self.hparams["network"])
        tables = None if masks is None else ChemistryMasks.from_plain(masks, self.vocab.tokens)
        extra: dict[str, Any] = {"masks": tables} if node.get("decoder", "graph") == "graph" else {}
        stats = self.hparams.get("condition_stats")
        if self.hparams.get("conditions") and stats is not None:
            extra.update(
                condition_dim=len(self.hparams["conditions"]),
                condition_table=torch.tensor(stats["table"], dtype=torch.float32),
                condition_mean=torch.tensor(stats["mean"]),
                condition_std=torch.tensor(stats["std"]),
            )
        if self.hparams.get("stereo"):
            extra["stereo"] = True
        self.vae = hydra.utils.instantiate(
            node, capacity=self.vocab.capacity, max_atoms=max_atoms, **extra
        )

    def check_data(self, meta: Mapping[str, Any]) -> None:
        """The data's settings (:meth:`GraphDataModule.planned_meta`) against this model's, before
        any run folder is made: ``data.stereo`` against ``model.stereo``, the computed condition
        properties against ``model.conditions``, and a network that takes the arguments they
        need (a ``UserError`` naming the key)."""
        have_stereo = bool(meta.get("stereo", False))
        stereo = self.hparams.get("stereo")
        if stereo is None and self.vae is not None:  # a built model without the record: none
            stereo = False
        if stereo is not None and bool(stereo) != have_stereo:
            raise UserError(f"model.stereo={stereo} needs data.stereo={bool(stereo)} (the data "
                            f"has data.stereo={have_stereo})")  # fmt: skip
        conditions = self.hparams.get("conditions") or []
        have = list(meta.get("condition_properties") or [])
        if conditions and have != conditions:
            raise UserError(f"model.conditions={conditions} needs data.condition_properties="
                            f"{conditions} (the data computes {have or 'none'})")  # fmt: skip
        if self.vae is not None or self.hparams.get("init_from"):
            return  # the network is built already, or comes from the init_from checkpoint
        target = self.hparams["network"].get("_target_", NETWORK_TARGET)
        params = inspect.signature(_locate(target, "model.network._target_")).parameters
        needs = (["stereo"] if stereo or (stereo is None and have_stereo) else []) + (
            ["condition_dim"] if conditions else []
        )
        for key in needs:
            if key not in params:
                why = "data.stereo=true" if key == "stereo" else f"model.conditions={conditions}"
                raise UserError(f"model.network._target_={target} takes no {key!r} argument, "
                                f"which {why} needs")  # fmt: skip

    def built(self) -> tuple[GraphVAE, Vocabulary]:
        """``(network, vocabulary)``; ``RuntimeError`` before :meth:`build` (or ``setup``)."""
        if self.vae is None or self.vocab is None:
            raise RuntimeError("the module has no network yet (train it or load a checkpoint)")
        return self.vae, self.vocab

    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "use_vocabulary"):
            if self.vae is None:
                raise RuntimeError("GraphVAEModule needs a vocabulary or a GraphDataModule")
            return
        self.check_data(dm.planned_meta())
        if self.hparams.get("stereo") is None and self.vae is None:
            self.hparams["stereo"] = bool(getattr(dm, "stereo", False))
        conditions = self.hparams.get("conditions") or []
        if conditions:
            if self.hparams.get("condition_stats") is None:
                self.hparams["condition_stats"] = condition_stats(dm, conditions)
        init = None
        if self.vae is None and self.hparams.get("init_from"):
            init = self._init_checkpoint(dm)
        if self.vocab is not None and dm.vocabulary.tokens != self.vocab.tokens:
            dm.use_vocabulary(self.vocab.tokens)  # the model's vocabulary wins; the data rejects
        max_atoms = self.hparams["max_atoms"]
        if init is not None:
            self._load_init(init)
        if self.vae is None:
            max_atoms = max_atoms or dm.max_atoms_seen
            masks = None
            if self.hparams["learn_masks"] and self.hparams["network"].get("decoder") == "graph":
                from medgen.molecules.masks import ChemistryMasks

                gen = torch.Generator().manual_seed(0)  # the same sample on every rank
                picks = torch.randperm(len(dm.train_set), generator=gen)[:MASK_SAMPLE]
                sample = [dm.train_set.graph(k) for k in sorted(picks.tolist())]
                tables = ChemistryMasks.learn_from(sample, len(dm.vocabulary))
                masks = tables.to_plain(dm.vocabulary.tokens)
                log.info("chemistry masks learned from %d training molecules: ring sizes %s",
                         len(sample), masks["ring_sizes"])  # fmt: skip
            self.build(dm.vocabulary.tokens, max_atoms, masks)
        if dm.max_atoms_seen > max_atoms:
            raise UserError(
                f"the data has molecules of {dm.max_atoms_seen} heavy atoms but "
                f"model.max_atoms={max_atoms}; set data.max_atoms to reject them"
            )

    def _init_checkpoint(self, dm: Any) -> tuple[Path, dict[str, Any]]:
        """Read ``init_from`` and build this network with its vocabulary, masks and sizes."""
        from medgen.utils.checkpoint import load_medgen_checkpoint

        file, ckpt, kind = load_medgen_checkpoint(self.hparams["init_from"])
        if kind != KIND:
            raise UserError(f"model.init_from={self.hparams['init_from']}: holds kind={kind!r}, "
                            "not a graph_vae")  # fmt: skip
        hp = upgrade_hparams(ckpt["hyper_parameters"])
        if hp.get("stereo") and not self.hparams.get("stereo"):
            raise UserError(f"model.init_from={self.hparams['init_from']}: a stereo model; set "
                            "data.stereo=true to fine-tune it")  # fmt: skip
        mine, theirs = self.hparams.get("conditions") or [], hp.get("conditions") or []
        if theirs and mine != theirs:
            raise UserError(f"model.init_from={self.hparams['init_from']}: a model conditioned on "
                            f"{theirs}; set model.conditions={theirs} (and data."
                            "condition_properties) to fine-tune it, or start from an "
                            "unconditional one")  # fmt: skip
        if theirs:  # the condition layer learned these units: keep them, draw from the new rows
            old = hp["condition_stats"]
            self.hparams["condition_stats"] = {**self.hparams["condition_stats"],
                                               "mean": old["mean"], "std": old["std"]}  # fmt: skip
        log.info("model.init_from: %s (step %s), vocabulary %s, max_atoms %s", file,
                 ckpt.get("global_step"), hp["vocabulary"], hp["max_atoms"])  # fmt: skip
        self._build_like(hp)
        return file, ckpt

    def _build_like(self, hp: Mapping[str, Any]) -> None:
        """Build the network of a checkpoint's hyperparameters ``hp``: its sizes, vocabulary and
        masks (its condition statistics are set by the caller)."""
        self.hparams["network"] = checked_network(hp["network"])
        self.hparams["learn_masks"] = hp.get("learn_masks", True)
        self.build(hp["vocabulary"], int(hp["max_atoms"]), hp.get("masks"))

    def prepare_resume(self, ckpt_path: str | os.PathLike) -> None:
        """Build the network a resumed run continues: the checkpoint's network sizes, vocabulary,
        masks and condition statistics (not ones learned again from the data), so that Lightning
        restores its weights and training state into the same model."""
        from medgen.utils.checkpoint import load_medgen_checkpoint

        file, ckpt, kind = load_medgen_checkpoint(ckpt_path)
        if kind != KIND:
            raise UserError(f"ckpt_path={ckpt_path}: holds kind={kind!r}, not a graph_vae")
        hp = upgrade_hparams(ckpt["hyper_parameters"])
        mine, theirs = self.hparams.get("conditions") or [], hp.get("conditions") or []
        if mine != theirs:
            raise UserError(f"ckpt_path={ckpt_path}: the run was conditioned on "
                            f"{theirs or 'nothing'}; resume it with "
                            f"model.conditions={theirs or 'null'}")  # fmt: skip
        if not hp.get("vocabulary") or not hp.get("max_atoms"):
            raise InputFileError(f"checkpoint {file}: hyper_parameters lack vocabulary/max_atoms")
        self.hparams["condition_stats"] = hp.get("condition_stats")
        self.hparams["init_from"] = hp.get("init_from")
        self.hparams["stereo"] = hp.get("stereo")
        log.info("resuming %s: vocabulary %s, max_atoms %s", file, hp["vocabulary"],
                 hp["max_atoms"])  # fmt: skip
        self._build_like(hp)

    def _load_init(self, init: tuple[Path, dict[str, Any]]) -> None:
        """Copy ``init_from``'s weights; only a conditional model's new condition layer may be
        missing from it."""
        file, ckpt = init
        state = ckpt["state_dict"]
        missing, unexpected = self.load_state_dict(state, strict=False)
        allowed = {"vae.condition.weight", "vae.condition.bias"}
        allowed |= {k for k in missing if k.startswith("vae.stereo_head.")}
        if unexpected or set(missing) - allowed:
            raise InputFileError(f"model.init_from {file}: weights do not fit (missing "
                                 f"{sorted(set(missing) - allowed)[:5]}, unexpected "
                                 f"{sorted(unexpected)[:5]})")  # fmt: skip
        new = sorted(missing) or "none"
        log.info("model.init_from: %d tensors loaded; new: %s", len(state), new)

    # ------------------------------------------------------------------------------ generator
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> GraphVAEModule:
        """Rebuild a trained module from a checkpoint or run dir (``weights_only=True``), in eval
        mode. Checkpoints written before networks were config nodes load too."""
        from medgen.utils.checkpoint import load_medgen_checkpoint, load_weights

        file, ckpt, kind = load_medgen_checkpoint(path, map_location=map_location)
        if kind != KIND:
            raise InputFileError(f"checkpoint {file} holds kind={kind!r}, not a graph_vae")
        version = ckpt["hyper_parameters"].get("model_version", 1)
        if not isinstance(version, int) or version > MODEL_VERSION:
            raise InputFileError(
                f"checkpoint {file}: the graph VAE model version changed (checkpoint "
                f"model_version={version!r}, this medgen reads up to {MODEL_VERSION}); "
                "load it with the medgen that wrote it or retrain"
            )
        hp = upgrade_hparams(ckpt["hyper_parameters"])
        if not hp.get("vocabulary") or not hp.get("max_atoms"):
            raise InputFileError(f"checkpoint {file}: hyper_parameters lack vocabulary/max_atoms")
        try:
            model = cls(**hp)
        except (TypeError, UserError) as err:
            raise InputFileError(f"checkpoint {file}: hyper_parameters do not fit: {err}") from err
        load_weights(model, ckpt["state_dict"], file)
        model.property_heads = ckpt.get("property_heads")
        prior = ckpt.get(PRIOR_KEY)
        if prior is not None:
            vae = model.vae
            assert vae is not None  # built from the hyper-parameters above
            try:
                vae.latent_prior = LatentPrior.from_record(
                    prior, latent_dim=vae.latent_dim, condition_dim=vae.condition_dim
                )
            except InputFileError as err:
                raise InputFileError(f"checkpoint {file}: {err}") from err
        return model.eval()

    def resolve_settings(self, settings: SampleSettings) -> SampleSettings:
        """Refuse the diffusion settings (``ConfigError`` naming the key); check temperature."""
        for key in ("sampler", "steps", "eta"):
            value = getattr(settings, key)
            if value is not None:
                shown = str(value) if key == "sampler" else value  # 'ddim', not the enum's repr
                raise ConfigError(key, shown, "null for a molecule model")
        if settings.guidance_scale != 1.0:
            raise ConfigError("guidance_scale", settings.guidance_scale, "1.0 for a molecule model")
        if settings.shift != 1.0:
            raise ConfigError("shift", settings.shift, "1.0 for a molecule model")
        if settings.condition is not None:  # property targets (medgen.molecules.conditioning)
            from medgen.molecules.conditioning import resolve_condition

            condition = resolve_condition(
                settings.condition, self.property_heads, stats=self.hparams.get("condition_stats")
            )
            settings = settings.replace(condition=condition)
        # the latent prior drawn from, as used: fitted (the checkpoint's) or normal
        choice = settings.extra.get("latent_prior", "auto")
        if self.vae is not None:
            with latent_prior_choice(self.vae, choice):
                used = "fitted" if self.vae.latent_prior is not None else "normal"
            settings = settings.replace(extra={**settings.extra, "latent_prior": used})
        return settings.replace(temperature=check_temperature(settings.temperature))

    def generate(self, indices: Sequence[int], settings: SampleSettings) -> Generated:
        """Molecules ``indices`` of ``settings.seed`` from the prior: canonical SMILES (None where
        RDKit rejected a decoded graph); molecule ``i`` depends on ``(seed, i)`` only."""
        vae, vocab = self.built()
        with latent_prior_choice(vae, settings.extra.get("latent_prior", "auto")):
            return self._generate([int(i) for i in indices], settings)

    def _generate(self, indices: list[int], settings: SampleSettings) -> Generated:
        vae, vocab = self.built()
        stats = self.hparams.get("condition_stats") if self.hparams.get("conditions") else None
        if settings.condition is not None and stats is not None:  # a conditional VAE
            from medgen.molecules.conditioning import condition_rows

            rows = condition_rows(stats, settings.condition)
            smiles = decode_indices(vae, vocab, indices, seed=settings.seed,
                                    temperature=settings.temperature, rows=rows)  # fmt: skip
            return Generated(indices, smiles)
        if settings.condition is not None:  # guided toward property targets
            from medgen.molecules.conditioning import guided_decode

            kw: dict[str, Any] = {"seed": settings.seed, "temperature": settings.temperature}
            heads = self.property_heads
            smiles = guided_decode(vae, vocab, heads, indices, condition=settings.condition, **kw)
            return Generated(indices, smiles)
        smiles = decode_indices(
            vae, vocab, indices, seed=settings.seed, temperature=settings.temperature
        )
        return Generated(indices, smiles)

    def cohort(
        self, out: str | os.PathLike, settings: SampleSettings, checkpoint: Path
    ) -> MoleculeCohort:
        """The :class:`~medgen.molecules.cohort.MoleculeCohort` writing ``out`` (.csv/.sdf)."""
        from medgen.molecules.cohort import MoleculeCohort

        return MoleculeCohort(out, settings, checkpoint)

    # ------------------------------------------------------------------------------ training
    def warmup_steps(self) -> int:
        """KL warm-up length in optimizer steps (``kl_warmup_fraction`` of the run when set)."""
        hp = self.hparams
        fraction = hp["kl_warmup_fraction"]
        if fraction is None or self._trainer is None:
            return int(hp["kl_warmup_steps"])
        if self._warmup_steps is None:
            total = self.run_steps()
            if total == float("inf"):
                log.warning("model.kl_warmup_fraction: the run has no step or epoch limit; "
                            "using model.kl_warmup_steps=%d", hp["kl_warmup_steps"])  # fmt: skip
                self._warmup_steps = int(hp["kl_warmup_steps"])
            else:
                self._warmup_steps = int(fraction * int(total))
        return self._warmup_steps

    def beta_at(self, step: int) -> float:
        """KL weight at a global step."""
        hp = self.hparams
        beta, start, warmup = hp["beta"], hp["kl_start_step"], self.warmup_steps()
        if warmup <= 0:
            return float(beta) if step >= start else 0.0
        return float(beta) * min(1.0, max(0.0, (step - start) / warmup))

    def run_steps(self) -> float:
        """The run's optimizer steps (``max_steps``/``max_epochs``; inf without either), once."""
        if self._run_steps is None:
            self._run_steps = float(self.trainer.estimated_stepping_batches)
        return self._run_steps

    def run_progress(self, step: int) -> float | None:
        """Share of the run done at optimizer step ``step``: the larger of ``step`` over the run's
        steps (``max_steps``/``max_epochs``) and the time spent over ``max_time``; None where the
        run has neither limit."""
        if self._trainer is None:
            return None
        from pytorch_lightning.callbacks import Timer

        shares = []
        total = self.run_steps()
        if total != float("inf") and total > 0:
            shares.append(step / total)
        for cb in getattr(self.trainer, "callbacks", []):
            if isinstance(cb, Timer):
                left = cb.time_remaining("train")
                if left is not None:
                    spent = cb.time_elapsed("train")
                    shares.append(spent / max(spent + left, 1e-9))
        return min(1.0, max(shares)) if shares else None

    def lr_factor(self, step: int) -> float:
        """Learning rate at optimizer step ``step`` as a share of the optimizer's ``lr``."""
        hp = self.hparams
        warm = hp.get("lr_warmup_steps", 0)
        factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        if hp.get("lr_schedule", "constant") == "cosine":
            progress = self.run_progress(step)
            if progress is None:
                if not self._no_length_warned:
                    self._no_length_warned = True
                    log.warning("model.lr_schedule=cosine: the run has no step, epoch or time "
                                "limit; the learning rate stays constant")  # fmt: skip
                return factor
            final = float(hp.get("lr_final_ratio", 0.05))
            factor *= final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor

    def on_train_start(self) -> None:
        # a resumed run's optimizer comes back with the last rate of the schedule it was saved
        # under; with a new step or time limit the first step already takes the new schedule's
        step = self.global_step
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR) and step > 0:
                for group, base in zip(
                    schedule.optimizer.param_groups, schedule.base_lrs, strict=True
                ):
                    group["lr"] = base * self.lr_factor(step)

    def _log_terms(self, prefix: str, out: dict[str, torch.Tensor], loss, bsz: int) -> None:
        # training: per step; val/test: the epoch mean. One key each: both at once would log
        # `<key>_step` and `<key>_epoch` twice over in the CSV
        on_step = prefix == "train"
        self.log(
            f"{prefix}/loss", loss, prog_bar=True, batch_size=bsz, on_step=on_step,
            on_epoch=not on_step,
        )  # fmt: skip
        keys = ["recon", "kl", "nll_atoms", "nll_parents", "nll_orders", "nll_closures"]
        for key in keys + (["nll_stereo"] if "nll_stereo" in out else []):
            self.log(
                f"{prefix}/{key}", out[key], batch_size=bsz, on_step=on_step, on_epoch=not on_step
            )

    def _forward(self, batch: Any, sample_z: bool | None = None) -> tuple[dict, int]:
        """The network's terms for a batch (a :class:`ConditionedBatch` for a conditional
        model: its properties standardized by the training statistics) and its size."""
        vae = self.built()[0]
        if hasattr(batch, "props"):
            cond = vae.standardize(batch.props) if vae.condition_dim else None
            out = vae(batch.graphs, sample_z=sample_z, cond=cond, stereo=batch.stereo)
            return out, batch.graphs.atoms.shape[0]
        return vae(batch, sample_z=sample_z), batch.atoms.shape[0]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out, bsz = self._forward(batch)
        beta = self.beta_at(self.global_step)
        kl_term = out["kl"]
        free_bits = self.hparams["free_bits"]
        if free_bits > 0:  # Kingma et al. 2016: no KL pressure below the floor
            kl_term = out["kl_per_dim"].clamp(min=free_bits).sum()
        loss = out["recon"] + beta * kl_term
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.global_step}")
        self._log_terms("train", out, loss, bsz)
        self.log("train/beta", beta, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out, bsz = self._forward(batch, sample_z=True)
        loss = out["recon"] + out["kl"]
        self._log_terms("val", out, loss, bsz)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out, bsz = self._forward(batch, sample_z=True)
        loss = out["recon"] + out["kl"]
        self._log_terms("test", out, loss, bsz)
        return loss

    def configure_optimizers(self) -> Any:
        import hydra

        factory = hydra.utils.instantiate({**self.hparams["optimizer"], "_partial_": True})
        optimizer = factory(params=self.built()[0].parameters())
        hp = self.hparams
        if hp.get("lr_schedule", "constant") == "constant" and not hp.get("lr_warmup_steps", 0):
            return optimizer

        def factor(step: int) -> float:  # a plain function: LambdaLR stores no state for it
            return self.lr_factor(step)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }


# ---------------------------------------------------------------------------------- config nodes


def _plain(node: Any, key: str) -> dict[str, Any]:
    """A config node (dict or DictConfig) as a plain dict; anything else is a ConfigError."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ConfigError(key, node, "a mapping with a _target_")
    return dict(node)


def _locate(target: Any, key: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(str(target))
    except Exception as err:  # noqa: BLE001 - Hydra raises several kinds for a bad path
        raise ConfigError(key, target, "an importable class or function") from err


def checked_network(network: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``model.network`` node as a plain dict, every argument checked against its class.

    Keys given without ``_target_`` (or with the default one) override :data:`NETWORK`.
    """
    node = _plain(network if network is not None else {}, "model.network")
    if node.get("_target_", NETWORK_TARGET) == NETWORK_TARGET:
        node = {**NETWORK, **node}
    cls = _locate(node["_target_"], "model.network._target_")
    params = inspect.signature(cls).parameters
    values = {k: v for k, v in node.items() if not k.startswith("_")}
    if node["_target_"] == NETWORK_TARGET and values.get("decoder", "graph") not in DECODERS:
        raise ConfigError("model.network.decoder", values["decoder"], f"one of {list(DECODERS)}")
    for key, value in values.items():
        if key in FROM_DATA:
            raise ConfigError(f"model.network.{key}", value, "unset (it comes from the data)")
        if key not in params:
            raise ConfigError(f"model.network.{key}", value, f"an argument of {node['_target_']}")
    fn = cls.__init__ if inspect.isclass(cls) else cls
    check_arguments(fn, values, prefix="model.network.", limits=_NETWORK_LIMITS)
    return node


def checked_conditions(conditions: Sequence[str] | None) -> list[str] | None:
    """``model.conditions``: distinct names of computable properties, or None."""
    if not conditions:
        return None
    from medgen.molecules.api import property_function

    names = [str(c) for c in conditions]
    bad = [n for n in names if property_function(n) is None]
    if bad or len(set(names)) != len(names):
        raise ConfigError("model.conditions", names, "distinct property names (qed, sa, logp)")
    return names


def condition_stats(dm: Any, names: Sequence[str]) -> dict[str, Any]:
    """Mean, std and a seeded table of raw property rows (up to :data:`CONDITION_TABLE_ROWS`) of
    the training split: what a conditional model standardizes with and draws conditions from."""
    values = dm.condition_values[torch.tensor(dm.train_indices, dtype=torch.long)]
    gen = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(values), generator=gen)[:CONDITION_TABLE_ROWS]
    std = values.std(0).clamp(min=1e-6)
    return {
        "names": list(names),
        "mean": [round(float(v), 6) for v in values.mean(0)],
        "std": [round(float(v), 6) for v in std],
        "table": [[round(float(x), 5) for x in row] for row in values[picks.sort().values]],
    }


def checked_optimizer(optimizer: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``model.optimizer`` node as a plain dict (``_partial_: true``), lr and decay checked."""
    node = _plain(optimizer if optimizer is not None else OPTIMIZER, "model.optimizer")
    if "_target_" not in node:
        node = {**OPTIMIZER, **node}
    _locate(node["_target_"], "model.optimizer._target_")
    for key, limits in _OPTIMIZER_LIMITS.items():
        if key in node:
            node[key] = check_value(f"model.optimizer.{key}", node[key], float, limits)
    return {**node, "_partial_": True}


_LEGACY_NETWORK = ("latent_dim", "hidden_dim", "encoder_layers", "pair_dim")
_LEGACY_OPTIMIZER = ("lr", "weight_decay")
_DROPPED = ("kind", "module", "n_val_samples", "grid_size", "n_val_recon", "sample_seed",
            "model_version")  # fmt: skip


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a checkpoint's hyperparameters, also those of checkpoints
    written with flat network sizes, ``lr`` and validation-sampling keys (before config nodes)."""
    hp = dict(hparams)
    version = hp.get("model_version", 1)
    if "network" not in hp:
        legacy = {k: hp.pop(k) for k in _LEGACY_NETWORK if k in hp}
        hp["network"] = {**NETWORK, "decoder": "sequence", **legacy}
    if version == 1:  # trained with the sequence decoder and valence masks only
        hp["network"] = {**hp["network"], "decoder": "sequence"}
        hp.update(learn_masks=False, masks=None)
    if "optimizer" not in hp:
        hp["optimizer"] = {**OPTIMIZER, **{k: hp.pop(k) for k in _LEGACY_OPTIMIZER if k in hp}}
    for key in _DROPPED:
        hp.pop(key, None)
    return hp
