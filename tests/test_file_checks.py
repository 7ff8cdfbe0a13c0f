"""The checks that name the file and place of a problem: UTF-8, JSON Lines, safetensors headers."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from tiny_checkpoint import save_tiny_checkpoint

from quietstar import checkpoint_files as file_checks
from quietstar.checkpoint_files import (
    CheckpointError,
    check_safetensors_file,
    check_weight_files,
    invalid_json_line,
    invalid_utf8_offset,
)
from quietstar.training.config import ModelConfig
from quietstar.training.model import build_model


def test_utf8_offset_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(file_checks, "_CHUNK_BYTES", 8)
    path = tmp_path / "x.txt"
    good = "ab€cdéfgh€ij".encode()  # multi-byte characters straddle the 8-byte chunk borders
    path.write_bytes(good)
    assert invalid_utf8_offset(path) is None
    path.write_bytes(good + b"\xe2\x82" + b"z")  # a cut-off euro sign followed by an ASCII byte
    assert invalid_utf8_offset(path) == len(good)
    path.write_bytes(good + b"\xe2\x82")  # cut off at the end of the file
    assert invalid_utf8_offset(path) == len(good)
    path.write_bytes(b"1234567\xff")
    assert invalid_utf8_offset(path) == 7


def test_json_lines_and_json_arrays(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert invalid_json_line(path) is None
    path.write_text('{"a": 1}\n\n{"a": 2,}\n')
    assert invalid_json_line(path) == (3, "Expecting property name enclosed in double quotes (column 9)")
    path.write_text('{"a": 1}\n[1, 2]\n')
    assert invalid_json_line(path) == (2, "expected a JSON object, got list")
    path.write_text('[\n  {"a": 1},\n  {"a": 2}\n  {"a": 3}\n]\n')
    assert invalid_json_line(path) == (4, "Expecting ',' delimiter (column 3)")


def _write_weights(path):
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(3)}, path)
    return path.stat().st_size


def test_safetensors_header_checks(tmp_path):
    path = tmp_path / "model.safetensors"
    size = _write_weights(path)
    check_safetensors_file(path)
    with open(path, "r+b") as file:
        file.truncate(size - 1)
    # Each damage is one line naming the file, its size and safetensors' reason.
    damaged = rf"^{path} is truncated or damaged"
    with pytest.raises(CheckpointError, match=rf"{damaged} \({size - 1} bytes\): incomplete metadata, file not fully covered$"):
        check_safetensors_file(path)
    with open(path, "r+b") as file:
        file.truncate(30)
    with pytest.raises(CheckpointError, match=rf"{damaged} \(30 bytes\): invalid header length$"):
        check_safetensors_file(path)
    for length in (5, 0):
        with open(path, "r+b") as file:
            file.truncate(length)
        with pytest.raises(CheckpointError, match=rf"{damaged} \({length} bytes\): header too small$"):
            check_safetensors_file(path)
    size = _write_weights(path)
    with open(path, "ab") as file:
        file.write(b"\0" * 3)
    with pytest.raises(CheckpointError, match=rf"{damaged} \({size + 3} bytes\): incomplete metadata, file not fully covered$"):
        check_safetensors_file(path)
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match=rf"{damaged} \(12 bytes\): invalid UTF-8 in header: [^\n]+$"):
        check_safetensors_file(path)
    path.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(CheckpointError, match=rf"{damaged} \(12 bytes\): invalid JSON in header: [^\n]+$"):
        check_safetensors_file(path)
    path.write_text("not a safetensors file at all")
    with pytest.raises(CheckpointError, match=rf"{damaged} \(29 bytes\): [^\n]+$"):
        check_safetensors_file(path)


def test_weight_files_of_a_sharded_checkpoint(tmp_path):
    sizes = [_write_weights(tmp_path / f"model-0000{k}-of-00002.safetensors") for k in (1, 2)]
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    check_weight_files(tmp_path)
    second = tmp_path / "model-00002-of-00002.safetensors"
    with open(second, "r+b") as file:
        file.truncate(sizes[1] - 8)
    with pytest.raises(CheckpointError, match=rf"^{second} is truncated or damaged"):
        check_weight_files(tmp_path)
    second.unlink()
    with pytest.raises(CheckpointError, match=r"lists weight files that are missing: \['model-00002-of-00002.safetensors'\]"):
        check_weight_files(tmp_path)


def test_json_line_cut_short_points_at_its_end(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"\n')
    assert invalid_json_line(path) == (2, "Expecting ',' delimiter (column 15)")


def test_training_loader_names_a_truncated_checkpoint(tmp_path, mistral_tokenizer):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    weights = checkpoint / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as file:
        file.truncate(size - 4)
    with pytest.raises(CheckpointError, match=rf"^{weights} is truncated or damaged \({size - 4} bytes\): incomplete metadata"):
        build_model(ModelConfig(name_or_path=str(checkpoint)), mistral_tokenizer, seed=0)
