"""Per-module loggers. Library code only calls :func:`get_logger`; the CLI configures handlers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any


def get_logger(name: str) -> logging.Logger:
    """The logger for a module (``get_logger(__name__)``)."""
    return logging.getLogger(name)


def configure_logging(level: int = logging.INFO) -> None:
    """Configure the root logger for scripts that do not run under Hydra (which does it itself)."""
    logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


def format_value(name: str, value: float) -> str:
    """A metric as people read it: learning rates in scientific notation (``5.0e-04``), counts
    as integers, everything else with 4 significant digits (``0.8395``, ``1.2e+03``)."""
    if name.rsplit("/", 1)[-1].startswith("lr"):
        return f"{value:.1e}"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``name=value`` pairs, sorted by name, values as :func:`format_value` writes them."""
    return "  ".join(f"{k}={format_value(k, v)}" for k, v in sorted(metrics.items()))


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def parameter_summary(model: Any) -> str:
    """A table of ``model``'s top-level submodules (an ``nn.Module``) and its parameter counts.

    A submodule whose class sets ``weight_copy = True`` (an EMA copy of the network) is listed
    but not counted: the totals are the parameters the model has, not twice them.
    """
    rows = [("name", "type", "params", "")]
    trainable = frozen = copies = 0
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if getattr(child, "weight_copy", False):
            copies += n
            rows.append((name, type(child).__name__, _count(n), "a copy of weights, not counted"))
            continue
        t = sum(p.numel() for p in child.parameters() if p.requires_grad)
        trainable, frozen = trainable + t, frozen + n - t
        rows.append(
            (name, type(child).__name__, _count(n), "" if n == t else f"{_count(n - t)} frozen")
        )
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    total = trainable + frozen
    lines.append(
        f"parameters: {_count(total)} ({trainable:,} trainable, {frozen:,} frozen; "
        f"{total * 4 / 2**20:.1f} MiB as float32)"
        + (f"; EMA copies ({copies:,}) not counted" if copies else "")
    )
    return "\n".join(lines)
