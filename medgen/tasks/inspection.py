"""``medgen inspect <file>``: whether medgen made a file, from which checkpoint and settings.

Reads the marking (:func:`medgen.marking.read_mark`) of a NIfTI, CSV/SMI/TXT, SDF, Parquet or
JSON file. A file without one (a real scan, a plain CSV) is not an error: the answer is
``no medgen marking found``. A missing or unreadable file is a ``UserError`` (exit 2).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from omegaconf import DictConfig

from medgen.tasks.checks import check_inspect as check


def describe(record: dict[str, Any] | None) -> list[str]:
    """The lines ``medgen inspect`` prints for a marking record (or None)."""
    if record is None:
        return ["synthetic: no", "no medgen marking found"]
    lines = ["synthetic: yes (made by medgen)"]
    if record.get("partial"):
        sha = record.get("checkpoint_sha12") or record.get("checkpoint_sha8") or "unknown"
        lines += [
            f"checkpoint sha256: {sha}... (short mark only)",
            "the full record was not kept by the tool that last wrote this file",
        ]
    else:
        lines += [
            f"kind: {record.get('kind')}",
            f"generator: {record.get('generator')}",
            f"checkpoint sha256: {record.get('checkpoint_sha256')}",
            f"settings: {json.dumps(record.get('settings', {}), sort_keys=True)}",
            f"medgen version: {record.get('medgen_version')}",
        ]
        data = record.get("data")
        if isinstance(data, dict) and data.get("description"):
            lines.append(
                f"training data: {data['description']} (sha256 {data.get('source_sha256')})"
            )
    lines.append(f"marks found in: {', '.join(record.get('found_in', [])) or 'unknown'}")
    return lines


def inspect(cfg: DictConfig) -> dict[str, Any] | None:
    """Print what ``cfg.path`` says about itself; returns its marking record (None: none)."""
    from medgen.marking import read_mark

    job = check(cfg)
    record = read_mark(job.path)
    if job.json:
        print(json.dumps({"path": str(job.path), "marking": record}, indent=2, sort_keys=True))
    else:
        print("\n".join([f"file: {job.path}", *describe(record)]))
    return record


if __name__ == "__main__":
    from medgen.cli import main

    sys.exit(main(["inspect", *sys.argv[1:]]))
