"""Checks that name the file and the place of a problem: invalid UTF-8, invalid JSON lines, truncated safetensors.

The data and evaluation loaders call the text checks only after reading failed, to turn an error that names neither
file nor line into one that does; the checkpoint loaders call `check_safetensors_file` (`safetensors.safe_open`
with an error that names the file) before loading weights.
"""

import codecs
import json
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open

from .errors import UserError

_CHUNK_BYTES = 1 << 20


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded: missing, not a checkpoint directory, or with a damaged weights file."""


def invalid_utf8_offset(path: str | Path) -> int | None:
    """Byte offset of the first byte of `path` that is not valid UTF-8, or None when the whole file is valid."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0
    with open(path, "rb") as file:
        while True:
            chunk = file.read(_CHUNK_BYTES)
            final = not chunk
            try:
                decoder.decode(chunk, final=final)
            except UnicodeDecodeError as error:
                # error.object is the undecoded tail of earlier chunks followed by this chunk.
                return consumed - (len(error.object) - len(chunk)) + error.start
            if final:
                return None
            consumed += len(chunk)


def invalid_json_line(path: str | Path) -> tuple[int, str] | None:
    """(line number, reason) of the first line of the JSON Lines file `path` that is not a JSON object.

    Blank lines are allowed. A file whose first character is `[` is read as one JSON array instead, and the line of
    its first syntax error is returned. Returns None when the file is valid.
    """
    with open(path, encoding="utf-8-sig") as file:
        head = file.read(_CHUNK_BYTES).lstrip()
    if head.startswith("["):
        try:
            json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            return error.lineno, f"{error.msg} (column {error.colno})"
        return None
    with open(path, encoding="utf-8-sig") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))  # a trailing newline would move the error to a "line 2"
            except json.JSONDecodeError as error:
                return number, f"{error.msg} (column {error.colno})"
            if not isinstance(value, dict):
                return number, f"expected a JSON object, got {type(value).__name__}"
    return None


def text_file_problem(path: str | Path, json_lines: bool) -> str | None:
    """`"PATH is not valid UTF-8 (byte N)"`, `"PATH line N is not valid JSON: ..."` or None when `path` reads."""
    offset = invalid_utf8_offset(path)
    if offset is not None:
        return f"{path} is not valid UTF-8 (byte {offset})"
    if json_lines:
        problem = invalid_json_line(path)
        if problem is not None:
            return f"{path} line {problem[0]} is not valid JSON: {problem[1]}"
    return None


def check_safetensors_file(path: str | Path) -> None:
    """Raise `CheckpointError` naming `path` when `safetensors.safe_open` cannot open it: too short for a header,
    a header that is not JSON or does not describe the tensors, or tensor data that does not cover the file exactly
    (truncated or extended). The message is one line: the file, its size and safetensors' reason."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        reason = str(error).strip().splitlines()[0].removeprefix("Error while deserializing header: ")
        raise CheckpointError(f"{path} is truncated or damaged ({Path(path).stat().st_size} bytes): {reason}") from None


def check_weight_files(directory: str | Path) -> None:
    """Check every safetensors file of the checkpoint `directory` (single file or the shards of an index)."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a safetensors index: {error!r}") from None
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists weight files that are missing: {missing}")
    else:
        names = ["model.safetensors"] if (directory / "model.safetensors").is_file() else []
    for name in names:
        check_safetensors_file(directory / name)


def could_be_hub_id(name: str) -> bool:
    """Whether `name` has the form of a hub repository id (`name` or `namespace/name`); paths such as `./x`,
    `/x` or `a/b/c` do not."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_base_source(name_or_path: str, gguf_file: str | None = None) -> None:
    """Raise `CheckpointError` naming the path when a base model cannot be read from `name_or_path` (and `gguf_file`).

    A directory must hold `config.json` and intact safetensors files, or the GGUF file `gguf_file`; a name that is
    no directory must have the form of a hub id (whether the hub has it is found out when loading).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise CheckpointError(f"no GGUF file {gguf_file!r} in {path.resolve()}")
            return
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path.resolve()} is not a model directory: it has no config.json")
        check_weight_files(path)
        return
    if path.exists():
        hint = " (pass its directory and its file name as gguf_file)" if path.suffix == ".gguf" else ""
        raise CheckpointError(f"{path.resolve()} is a file, not a model directory{hint}")
    if not could_be_hub_id(name_or_path):
        raise CheckpointError(f"no such directory: {path.absolute()}")


__all__ = [
    "CheckpointError",
    "check_base_source",
    "check_safetensors_file",
    "check_weight_files",
    "could_be_hub_id",
    "invalid_json_line",
    "invalid_utf8_offset",
    "text_file_problem",
]
