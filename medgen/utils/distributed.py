"""Distributed (DDP) helpers shared by training and sampling."""

from __future__ import annotations


def end_distributed(*, barrier: bool = True) -> None:
    """Destroy the process group after DDP: without it Gloo runs abort at exit now and then.

    ``barrier=False`` after an error: another rank may already be gone, so do not wait for it.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
