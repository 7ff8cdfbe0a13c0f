"""The training data stream: synthetic corpus, local sources, mixing, rank split, packing, resume, errors."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quietstar.training.data import (
    DataSourceError,
    PackedTokenStream,
    mixed_documents,
    shard_split_note,
    synthetic_corpus_files,
)
from quietstar.training.synthetic import write_synthetic_corpus
from quietstar.training.config import ConfigError, DataConfig, DataSourceConfig, SyntheticCorpusConfig

REPO = Path(__file__).resolve().parents[1]


def _write_jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "url": "u"}) + "\n" for t in texts))


@pytest.fixture
def two_sources(tmp_path):
    """Source A (2 shards of 300 docs 'a-<shard>-<i>') and source B (2 shards of 300 docs 'b-<shard>-<i>')."""
    for name in "ab":
        for shard in range(2):
            _write_jsonl(tmp_path / name / f"{shard}.jsonl", [f"{name}-{shard}-{i}" for i in range(300)])
    return [
        DataSourceConfig(path="json", data_files=str(tmp_path / "a" / "*.jsonl"), probability=0.8),
        DataSourceConfig(path="json", data_files=str(tmp_path / "b" / "*.jsonl"), probability=0.2),
    ]


def _take(dataset, n):
    return [example["text"] for _, example in zip(range(n), dataset)]


def test_synthetic_corpus_is_deterministic_and_reused(tmp_path):
    first = write_synthetic_corpus(tmp_path / "one", n_documents=20, n_shards=2, seed=3)
    second = write_synthetic_corpus(tmp_path / "two", n_documents=20, n_shards=2, seed=3)
    assert [open(p).read() for p in first] == [open(p).read() for p in second]
    assert write_synthetic_corpus(tmp_path / "one", n_documents=20, n_shards=2, seed=3) == first
    docs = [json.loads(line)["text"] for p in first for line in open(p)]
    assert len(docs) == 20 and all("=" in d for d in docs)
    with pytest.raises(FileExistsError, match="does not hold a synthetic corpus"):
        write_synthetic_corpus(tmp_path / "one", n_documents=21, n_shards=2, seed=3)


def test_mixing_ratio_is_honoured(two_sources):
    config = DataConfig(sources=two_sources, seq_len=8)
    texts = _take(mixed_documents(config, rank=0, world_size=1, seed=0), 500)
    share_a = sum(t.startswith("a-") for t in texts) / len(texts)
    assert abs(share_a - 0.8) < 0.05


def test_ranks_see_disjoint_data(two_sources):
    config = DataConfig(sources=two_sources, seq_len=8)
    per_rank = [set(_take(mixed_documents(config, rank=r, world_size=2, seed=0), 200)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 200
    assert not per_rank[0] & per_rank[1]
    # With 2 shards per source and 2 ranks, each rank reads whole shards of its own.
    shards = [Counter(t.split("-")[1] for t in texts) for texts in per_rank]
    assert set(shards[0]) == {"0"} and set(shards[1]) == {"1"}


def test_packing_and_resume_give_the_same_batches(two_sources, mistral_tokenizer):
    config = DataConfig(sources=two_sources, seq_len=16)
    stream = PackedTokenStream(config, mistral_tokenizer, seed=0)
    first = stream.next_batch(3)
    assert first.shape == (3, 16) and int(first[0, 0]) == mistral_tokenizer.bos_token_id
    assert (first == mistral_tokenizer.eos_token_id).any()
    state = json.loads(json.dumps(stream.state_dict()))  # the checkpoint stores it as JSON
    expected = [stream.next_batch(3) for _ in range(4)]
    resumed = PackedTokenStream(config, mistral_tokenizer, seed=0)
    resumed.load_state_dict(state)
    for batch in expected:
        assert (resumed.next_batch(3) == batch).all()


def test_stream_restarts_at_the_end_of_an_epoch(tmp_path, mistral_tokenizer):
    _write_jsonl(tmp_path / "small.jsonl", ["one two three", "four five six"])
    config = DataConfig(sources=[DataSourceConfig(path="json", data_files=str(tmp_path / "small.jsonl"))], seq_len=8)
    stream = PackedTokenStream(config, mistral_tokenizer)
    batch = stream.next_batch(4)
    assert batch.shape == (4, 8) and stream.epoch >= 1


def test_synthetic_source_reads_generated_files(tmp_path, mistral_tokenizer):
    config = DataConfig(seq_len=32, synthetic=SyntheticCorpusConfig(n_documents=10, n_shards=2))
    files = synthetic_corpus_files(config, tmp_path)
    assert len(files) == 2 and all(f.startswith(str(tmp_path / "synthetic_corpus")) for f in files)
    batch = PackedTokenStream(config, mistral_tokenizer, synthetic_files=files).next_batch(2)
    first_document = json.loads(open(files[0]).readline())["text"]
    assert first_document.startswith(mistral_tokenizer.decode(batch[0], skip_special_tokens=True))


def test_missing_files_and_columns_give_clear_errors(tmp_path, mistral_tokenizer):
    missing = DataConfig(sources=[DataSourceConfig(path="json", data_files=str(tmp_path / "nope" / "*.jsonl"))])
    with pytest.raises(DataSourceError, match=r"^data\.sources\.0\.data_files: no file matches \[.*nope"):
        PackedTokenStream(missing, mistral_tokenizer)
    no_files = DataConfig(sources=[DataSourceConfig(path="parquet")])
    with pytest.raises(DataSourceError, match=r"data\.sources\.0\.data_files must name the local files"):
        PackedTokenStream(no_files, mistral_tokenizer)
    _write_jsonl(tmp_path / "x.jsonl", ["hello"])
    wrong_column = DataConfig(
        sources=[DataSourceConfig(path="json", data_files=str(tmp_path / "x.jsonl"), text_field="content")]
    )
    with pytest.raises(DataSourceError, match=r"data\.sources\.0\.text_field: column 'content'"):
        PackedTokenStream(wrong_column, mistral_tokenizer)
    assert issubclass(DataSourceError, ConfigError)  # train.py reports config errors as one line


def _stream_error(sources, tokenizer) -> str:
    """The one-line message of the `DataSourceError` raised while opening `sources` or reading their first rows."""
    with pytest.raises(DataSourceError) as error:
        PackedTokenStream(DataConfig(sources=sources, seq_len=8), tokenizer).next_batch(4)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("mixed", [False, True], ids=["alone", "mixed"])
def test_empty_sources_are_named(tmp_path, mistral_tokenizer, mixed):
    _write_jsonl(tmp_path / "good.jsonl", ["one two", "three four"])
    good = [DataSourceConfig(path="json", data_files=str(tmp_path / "good.jsonl"))] if mixed else []
    where = f"data.sources.{len(good)}"
    empty_json = tmp_path / "empty.jsonl"
    empty_json.write_text("")
    message = _stream_error([*good, DataSourceConfig(path="json", data_files=str(empty_json))], mistral_tokenizer)
    assert message.startswith(f"{where} ('json', {empty_json}) yields no text")

    zero_rows = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), zero_rows)
    message = _stream_error([*good, DataSourceConfig(path="parquet", data_files=str(zero_rows))], mistral_tokenizer)
    assert message.startswith(f"{where} ('parquet', {zero_rows}) yields no text")

    # Not empty on disk, but no line holds a document: found only by reading the source.
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    message = _stream_error([*good, DataSourceConfig(path="json", data_files=str(blank))], mistral_tokenizer)
    assert message == f"{where} ('json', {blank}) yields no text"


@pytest.mark.parametrize("mixed", [False, True], ids=["alone", "mixed"])
def test_invalid_json_line_names_file_and_line(tmp_path, mistral_tokenizer, mixed):
    _write_jsonl(tmp_path / "good.jsonl", ["one two", "three four"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": oops}\n{"text": "never read"}\n')
    good = [DataSourceConfig(path="json", data_files=str(tmp_path / "good.jsonl"))] if mixed else []
    # The bad file comes second within its source, so the error surfaces while streaming, not while opening.
    source = DataSourceConfig(path="json", data_files=[str(tmp_path / "good.jsonl"), str(bad)])
    message = _stream_error([*good, source], mistral_tokenizer)
    assert message.startswith(f"data.sources.{len(good)} ('json', ")
    assert message.endswith(f"{bad} line 4 is not valid JSON: Expecting value (column 10)")


@pytest.mark.parametrize("builder", ["text", "json"])
def test_invalid_utf8_names_file_and_byte_offset(tmp_path, mistral_tokenizer, builder):
    bad = tmp_path / f"bad.{'txt' if builder == 'text' else 'jsonl'}"
    prefix = "first line\nsecond, with é\n".encode() if builder == "text" else '{"text": "é"}\n'.encode()
    bad.write_bytes(prefix + b'{"text": "\xff"}\n' if builder == "json" else prefix + b"third \xff\n")
    offset = len(prefix) + (len('{"text": "') if builder == "json" else len("third "))
    message = _stream_error([DataSourceConfig(path=builder, data_files=str(bad))], mistral_tokenizer)
    assert message == f"data.sources.0 ({builder!r}, {bad}): {bad} is not valid UTF-8 (byte {offset})"


def test_train_py_reports_a_bad_data_file_in_one_line(tmp_path):
    """A data error reaches the user of train.py as one line (no traceback), naming the source, file and line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"\n')
    command = [
        sys.executable, str(REPO / "train.py"), "--output-dir", str(tmp_path / "run"),
        "--data.sources.0.path=json", f"--data.sources.0.data_files={bad}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"train.py: error: data.sources.0 ('json', {bad}): {bad} line 2 is not valid JSON: "
        "Expecting ',' delimiter (column 15)"
    )


def test_uneven_shards_are_explained_once_by_rank_0(tmp_path, mistral_tokenizer, caplog):
    # 1 shard over 2 ranks: every rank reads all of it, but the documents are still split; rank 0 says so once,
    # also when the stream position is then restored.
    assert shard_split_note(1, 2) == (
        "the data stream has 1 shard(s), not a multiple of the world size 2: each rank reads the whole stream and keeps "
        "one document in 2, so the ranks train on disjoint documents and only the reading is repeated on every rank; "
        "with a multiple of 2 shards (data.synthetic.n_shards for the generated corpus) each rank reads only its own "
        "shards"
    )
    assert shard_split_note(4, 2) is None and shard_split_note(3, 1) is None
    _write_jsonl(tmp_path / "one.jsonl", [f"doc {i}" for i in range(40)])
    config = DataConfig(sources=[DataSourceConfig(path="json", data_files=str(tmp_path / "one.jsonl"))], seq_len=8)
    with caplog.at_level("WARNING", logger="quietstar.training.data"):
        streams = [PackedTokenStream(config, mistral_tokenizer, rank=rank, world_size=2) for rank in range(2)]
        for stream in streams:
            stream.load_state_dict(stream.state_dict())
    assert [record.getMessage() for record in caplog.records] == [shard_split_note(1, 2)]
    documents = [{stream.next_document() for _ in range(5)} for stream in streams]
    assert not documents[0] & documents[1]  # disjoint documents: the reading is repeated, the data is not
