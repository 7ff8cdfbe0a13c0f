"""Writing a directory so that its name shows the old version or the complete new one, never half of either.

A directory is written into its staging sibling `.tmp-<name>` and renamed to `<name>` when complete. An existing
`<name>` is first renamed to `.old-<name>` and deleted only after the new one is in place, so a process killed at any
moment leaves under `<name>` either the old directory or the complete new one, except between the two renames, when
`<name>` is absent and the old copy is whole under `.old-<name>`. A leftover `.tmp-<name>` (the write was killed) is
never read, and the next write of `<name>` removes it. One process writes a given `<name>` at a time.

Renames within a directory are atomic on POSIX file systems; files are not fsynced (a crash of the machine, not of the
process, may lose the last write).
"""

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


def staging_path(target: Path) -> Path:
    """The sibling `.tmp-<name>` that `target` is written into before it takes its name."""
    return target.with_name(f".tmp-{target.name}")


def replaced_path(target: Path) -> Path:
    """The sibling `.old-<name>` that an existing `target` is moved to while the new one takes its place."""
    return target.with_name(f".old-{target.name}")


def replace_directory(staging: Path, target: Path) -> None:
    """Move the complete directory `staging` to `target`, replacing an existing `target` (see the module docstring):
    `target` goes to `.old-<name>` first and is deleted only after `staging` took its name; when that rename fails,
    the old `target` is moved back."""
    old = replaced_path(target)
    shutil.rmtree(old, ignore_errors=True)
    if not target.exists():
        staging.rename(target)
        return
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory (`.tmp-<name>`, a leftover of a killed write removed first) for the caller to
    fill; when the block ends, it replaces `target` (`replace_directory`). When the block raises, the staging
    directory is deleted and `target` is left as it was.

        with atomic_directory(output / "final") as staging:
            model.save_pretrained(staging)
    """
    target = Path(target)
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
