"""medgen: generative models for synthetic 3D medical scans and drug-like molecules."""

from __future__ import annotations

__version__ = "0.1.0"
