"""The training token stream: text sources mixed by probability, split by rank, tokenised and packed to rows of L.

One code path serves the hub datasets (`open-web-math/open-web-math`, `allenai/c4` `en`, streamed) and local
jsonl/parquet/text files (tests and the offline default): every source is opened with
`datasets.load_dataset(..., streaming=True)`, sources are mixed with `interleave_datasets(probabilities=...)`, ranks get
disjoint parts with `split_dataset_by_node`, and documents are packed as `BOS doc EOS BOS doc EOS ...` into rows of
exactly `seq_len` tokens. `PackedTokenStream.state_dict()` holds the stream position (the `datasets` state plus the
packing buffer and epoch), so a resumed run continues with the same next batch.
"""

import glob
import logging
from pathlib import Path

import torch
from datasets import IterableDataset, interleave_datasets, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import PreTrainedTokenizerBase

from .synthetic import write_synthetic_corpus
from .training.config import SYNTHETIC_SOURCE, DataConfig, DataSourceConfig

logger = logging.getLogger(__name__)

_LOCAL_BUILDERS = ("json", "parquet", "text", "csv", "arrow")


def synthetic_corpus_files(config: DataConfig, output_dir: str | Path) -> list[str]:
    """Write (once) the generated corpus used by `path: synthetic` sources and return its jsonl files."""
    synthetic = config.synthetic
    directory = synthetic.directory or Path(output_dir) / "synthetic_corpus"
    return write_synthetic_corpus(directory, synthetic.n_documents, synthetic.n_shards, synthetic.seed)


def open_source(source: DataSourceConfig, where: str, synthetic_files: list[str] | None = None) -> IterableDataset:
    """Stream one source as an `IterableDataset` with a single `text` column. `where` names it in errors."""
    path, data_files = source.path, source.data_files
    if path == SYNTHETIC_SOURCE:
        if not synthetic_files:
            raise ValueError(f"{where}: the synthetic corpus has not been written (call synthetic_corpus_files first)")
        path, data_files = "json", synthetic_files
    if path in _LOCAL_BUILDERS:
        if data_files is None:
            raise ValueError(f"{where}.data_files must name the local files to read with the {path!r} builder")
        patterns = [data_files] if isinstance(data_files, str) else data_files
        missing = [p for p in patterns if not glob.glob(p) and "://" not in p]
        if missing:
            raise FileNotFoundError(f"{where}.data_files: no file matches {missing}")
    try:
        dataset = load_dataset(path, source.name, data_files=data_files, split=source.split, streaming=True)
    except Exception as error:
        raise type(error)(f"{where} ({source.path!r}): {error}") from error
    columns = dataset.column_names
    if columns is not None and source.text_field not in columns:
        raise ValueError(f"{where}.text_field: column {source.text_field!r} not in {columns}")
    dataset = dataset.select_columns([source.text_field])
    if source.text_field != "text":
        dataset = dataset.rename_column(source.text_field, "text")
    return dataset


def mixed_documents(
    config: DataConfig,
    *,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int = 0,
    synthetic_files: list[str] | None = None,
) -> IterableDataset:
    """The document stream of one rank: sources interleaved by probability, shuffled (if configured), split by rank.

    Mixing follows `interleave_datasets(..., stopping_strategy="all_exhausted")`: each document comes from source k
    with probability p_k (normalised); a source that runs out restarts until every source has been seen in full.
    Ranks get disjoint documents (`split_dataset_by_node`: whole shards per rank when the world size divides the
    number of shards, else every world_size-th document, which reads all shards on every rank).
    """
    sources = [
        open_source(source, f"data.sources.{i}", synthetic_files) for i, source in enumerate(config.sources)
    ]
    if len(sources) == 1:
        dataset = sources[0]
    else:
        total = sum(source.probability for source in config.sources)
        dataset = interleave_datasets(
            sources,
            probabilities=[source.probability / total for source in config.sources],
            seed=seed,
            stopping_strategy="all_exhausted",
        )
    if config.shuffle_buffer:
        dataset = dataset.shuffle(seed=seed, buffer_size=config.shuffle_buffer)
    if world_size > 1:
        if dataset.num_shards % world_size:
            logger.warning(
                "the stream has %d shards, not a multiple of the world size %d: every rank reads every shard",
                dataset.num_shards,
                world_size,
            )
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    dataset.set_epoch(epoch)
    return dataset


class PackedTokenStream:
    """Batches of packed token rows for one rank, with a checkpointable position.

    `next_batch(n)` returns a LongTensor (n, seq_len). Documents are tokenised with BOS and EOS and concatenated;
    rows are consecutive `seq_len` slices of that token stream (a document may continue in the next row). When the
    document stream ends, the next epoch starts (`set_epoch`, so a shuffle buffer reshuffles).
    """

    def __init__(
        self,
        config: DataConfig,
        tokenizer: PreTrainedTokenizerBase,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        synthetic_files: list[str] | None = None,
    ):
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("packing needs a tokenizer with BOS and EOS tokens")
        self.config, self.tokenizer = config, tokenizer
        self._open_kwargs = dict(rank=rank, world_size=world_size, seed=seed, synthetic_files=synthetic_files)
        self.epoch = 0
        self._buffer: list[int] = []
        self._dataset = mixed_documents(config, epoch=0, **self._open_kwargs)
        self._iterator = None

    def next_document(self) -> str:
        """The next document text of this rank; at the end of the stream the next epoch starts."""
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self._dataset)
            example = next(self._iterator, None)
            if example is not None:
                return example["text"]
            self._start_epoch(self.epoch + 1)
        raise ValueError("the data stream of this rank is empty (check data.sources and the world size)")

    def next_batch(self, batch_size: int) -> torch.LongTensor:
        """(batch_size, seq_len) token ids."""
        needed = batch_size * self.config.seq_len
        while len(self._buffer) < needed:
            ids = self.tokenizer(self.next_document(), add_special_tokens=False)["input_ids"]
            self._buffer.extend([self.tokenizer.bos_token_id, *ids, self.tokenizer.eos_token_id])
        rows, self._buffer = self._buffer[:needed], self._buffer[needed:]
        return torch.tensor(rows, dtype=torch.long).view(batch_size, self.config.seq_len)

    def state_dict(self) -> dict:
        """The stream position: epoch, the `datasets` iterator state and the tokens packed but not yet served."""
        return {"epoch": self.epoch, "dataset": self._dataset.state_dict(), "buffer": list(self._buffer)}

    def load_state_dict(self, state: dict) -> None:
        self._start_epoch(state["epoch"])
        self._dataset.load_state_dict(state["dataset"])
        self._buffer = list(state["buffer"])

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._dataset = mixed_documents(self.config, epoch=epoch, **self._open_kwargs)
        self._iterator = None


__all__ = ["PackedTokenStream", "mixed_documents", "open_source", "synthetic_corpus_files"]
