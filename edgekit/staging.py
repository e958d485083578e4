"""Write a result folder all or nothing: fill a staging folder beside it, then swap it in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgekit.errors import EdgekitError


@contextmanager
def staged_folder(
    out_dir: str | Path, *, marker: str, what: str, error: type[EdgekitError] = EdgekitError
) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces `out_dir`, on failure it is removed.

    An existing `out_dir` is replaced only if it is empty or holds `marker` (an earlier result of the
    same kind), so a typo in -o never deletes a user's folder, and a failed run never leaves a
    half-written result that looks finished.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / marker).exists())):
        raise error(f"output {out_dir} exists and is not {what}; choose an empty or new folder with -o")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
