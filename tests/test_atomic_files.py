"""`quietstar.atomic_files`: a directory is replaced whole or not at all, also when the writer is killed."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quietstar import atomic_files
from quietstar.atomic_files import atomic_directory, replace_directory

# Writes argv[1] through `atomic_directory` (the module at argv[3]) with files "a" and "b" holding "new", and is
# killed (SIGKILL, no clean-up) at the point argv[2] names: after writing "a" only, or between the two renames.
KILLED_WRITER = """
import importlib.util, os, signal, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("atomic_files", sys.argv[3])  # without importing torch via quietstar
atomic_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic_files)
target, kill_at = Path(sys.argv[1]), sys.argv[2]
if kill_at == "between_renames":
    rename = Path.rename
    def rename_then_die(self, destination):
        rename(self, destination)
        if Path(destination).name.startswith(".old-"):
            os.kill(os.getpid(), signal.SIGKILL)
    Path.rename = rename_then_die
with atomic_files.atomic_directory(target) as staging:
    (staging / "a").write_text("new")
    if kill_at == "while_writing":
        os.kill(os.getpid(), signal.SIGKILL)
    (staging / "b").write_text("new")
"""


def write_old(target: Path) -> None:
    target.mkdir()
    for name in ("a", "b"):
        (target / name).write_text("old")


def contents(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def run_killed_writer(target: Path, kill_at: str) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), kill_at, atomic_files.__file__], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


@pytest.mark.parametrize("existing", [False, True])
def test_the_target_holds_the_new_directory_and_nothing_is_left_beside_it(tmp_path, existing):
    target = tmp_path / "final"
    if existing:
        write_old(target)
        (target / "stale").write_text("old")
    with atomic_directory(target) as staging:
        assert staging == tmp_path / ".tmp-final" and staging.is_dir() and not any(staging.iterdir())
        for name in ("a", "b"):
            (staging / name).write_text("new")
    assert contents(target) == {"a": "new", "b": "new"}
    assert [path.name for path in tmp_path.iterdir()] == ["final"]


@pytest.mark.parametrize("existing", [False, True])
def test_an_error_while_writing_leaves_the_old_directory_or_nothing(tmp_path, existing):
    target = tmp_path / "final"
    if existing:
        write_old(target)
    with pytest.raises(OSError, match="disk full"):
        with atomic_directory(target) as staging:
            (staging / "a").write_text("new")
            raise OSError("disk full")
    assert [path.name for path in tmp_path.iterdir()] == (["final"] if existing else [])
    if existing:
        assert contents(target) == {"a": "old", "b": "old"}


@pytest.mark.parametrize("existing", [False, True])
def test_a_kill_while_writing_leaves_the_old_directory_or_nothing_and_the_next_write_succeeds(tmp_path, existing):
    target = tmp_path / "final"
    if existing:
        write_old(target)
    run_killed_writer(target, "while_writing")
    if existing:
        assert contents(target) == {"a": "old", "b": "old"}
    else:
        assert not target.exists()
    assert contents(tmp_path / ".tmp-final") == {"a": "new"}  # the half-written copy never has the target's name

    with atomic_directory(target) as staging:  # the leftover is removed, not mixed in
        (staging / "b").write_text("newer")
    assert contents(target) == {"b": "newer"}
    assert [path.name for path in tmp_path.iterdir()] == ["final"]


def test_a_kill_between_the_renames_leaves_the_old_directory_whole_beside_the_complete_new_one(tmp_path):
    target = tmp_path / "final"
    write_old(target)
    run_killed_writer(target, "between_renames")
    assert not target.exists()
    assert contents(tmp_path / ".old-final") == {"a": "old", "b": "old"}
    assert contents(tmp_path / ".tmp-final") == {"a": "new", "b": "new"}


def test_a_failed_rename_moves_the_old_directory_back(tmp_path, monkeypatch):
    target, staging = tmp_path / "final", tmp_path / ".tmp-final"
    write_old(target)
    staging.mkdir()
    rename = Path.rename

    def failing_rename(self, destination):
        if self == staging:
            raise OSError("rename failed")
        return rename(self, destination)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        replace_directory(staging, target)
    assert contents(target) == {"a": "old", "b": "old"} and not (tmp_path / ".old-final").exists()
