"""The training data stream: synthetic corpus, local sources, mixing, rank split, packing, resume, errors."""

import json
from collections import Counter

import pytest

from quietstar.data import PackedTokenStream, mixed_documents, synthetic_corpus_files
from quietstar.synthetic import write_synthetic_corpus
from quietstar.training.config import DataConfig, DataSourceConfig, SyntheticCorpusConfig


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
    with pytest.raises(FileNotFoundError, match=r"data\.sources\.0\.data_files: no file matches"):
        PackedTokenStream(missing, mistral_tokenizer)
    no_files = DataConfig(sources=[DataSourceConfig(path="parquet")])
    with pytest.raises(ValueError, match=r"data\.sources\.0\.data_files must name the local files"):
        PackedTokenStream(no_files, mistral_tokenizer)
    _write_jsonl(tmp_path / "x.jsonl", ["hello"])
    wrong_column = DataConfig(
        sources=[DataSourceConfig(path="json", data_files=str(tmp_path / "x.jsonl"), text_field="content")]
    )
    with pytest.raises(ValueError, match=r"data\.sources\.0\.text_field: column 'content'"):
        PackedTokenStream(wrong_column, mistral_tokenizer)
