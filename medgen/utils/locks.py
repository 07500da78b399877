"""A lock that independent jobs writing into one output share (array jobs on a shared file
system): ``flock`` on a ``.<name>.lock`` file beside the output."""

from __future__ import annotations

import os
from pathlib import Path


class ArrayLock:
    """A ``flock`` beside ``out`` (``.<name>.lock``) that the jobs of one array share.

    Opening it takes the lock exclusively when no other job holds it (:meth:`alone`: this job may
    prepare or finalize ``out``), else waits for a shared hold; :meth:`share` then lets other jobs
    join while this one draws. Where the file system has no locks, every job counts as alone.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out).with_name(f".{Path(out).name}.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._alone = True
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._alone = False
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits while a job prepares or finalizes
        except (ImportError, OSError):
            pass

    def alone(self) -> bool:
        return self._alone

    def share(self) -> None:
        if self._fd is not None and self._alone:
            try:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_SH)
            except (ImportError, OSError):
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def spans(indices: list[int], limit: int = 5) -> str:
    """``"3:5, 9:10"`` for [3, 4, 9] (at most ``limit`` spans, then how many more)."""
    found: list[list[int]] = []
    for i in indices:
        if found and found[-1][1] == i:
            found[-1][1] = i + 1
        else:
            found.append([i, i + 1])
    text = ", ".join(f"{a}:{b}" for a, b in found[:limit])
    return text + (f" and {len(found) - limit} more" if len(found) > limit else "")
