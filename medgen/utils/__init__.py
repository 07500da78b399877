"""Utilities shared by all of medgen: seeding (:mod:`~medgen.utils.seeding`), atomic writes
(:mod:`~medgen.utils.atomic`), provenance (:mod:`~medgen.utils.provenance`), checkpoint
loading (:mod:`~medgen.utils.checkpoint`), typed config records (:mod:`~medgen.utils.validate`),
DDP teardown (:mod:`~medgen.utils.distributed`) and logging.

Import from the submodules; nothing is imported here.
"""
