"""The training token stream: text sources mixed by probability, split by rank, tokenised and packed to rows of L.

One code path serves the hub datasets (`open-web-math/open-web-math`, `allenai/c4` `en`, streamed) and local
jsonl/parquet/text files (tests and the offline default): every source is opened with
`datasets.load_dataset(..., streaming=True)`, sources are mixed with `interleave_datasets(probabilities=...)`, ranks get
disjoint parts with `split_dataset_by_node`, and documents are packed as `BOS doc EOS BOS doc EOS ...` into rows of
exactly `seq_len` tokens. `PackedTokenStream.state_dict()` holds the stream position (the `datasets` state plus the
packing buffer and epoch), so a resumed run continues with the same next batch. A source that cannot be read or
yields no text raises `DataSourceError` (a `ConfigError`) naming `data.sources.<i>`, the file and, for a bad file,
the line (JSON Lines) or byte offset (invalid UTF-8).
"""

import glob
import logging
import os
from pathlib import Path
from typing import NoReturn

import pyarrow.parquet as pq
import torch
from datasets import IterableDataset, interleave_datasets, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import PreTrainedTokenizerBase

from ..checkpoint_files import text_file_problem
from .synthetic import write_synthetic_corpus
from .config import SYNTHETIC_SOURCE, ConfigError, DataConfig, DataSourceConfig

logger = logging.getLogger(__name__)

_LOCAL_BUILDERS = ("json", "parquet", "text", "csv", "arrow")
_TEXT_BUILDERS = ("json", "text", "csv")  # builders whose files must be UTF-8 text


class DataSourceError(ConfigError):
    """A data source that cannot be read or yields no text; the message names `data.sources.<i>` and the file."""


def synthetic_corpus_files(config: DataConfig, output_dir: str | Path) -> list[str]:
    """Write (once) the generated corpus used by `path: synthetic` sources and return its jsonl files."""
    synthetic = config.synthetic
    directory = synthetic.directory or Path(output_dir) / "synthetic_corpus"
    return write_synthetic_corpus(directory, synthetic.n_documents, synthetic.n_shards, synthetic.seed)


def _label(source: DataSourceConfig, where: str) -> str:
    """`data.sources.0 ('json', data/*.jsonl)`: the source's config key, builder or hub id, and its files."""
    files = source.data_files
    shown = [repr(source.path)]
    if files:
        shown.append(files if isinstance(files, str) else ", ".join(files))
    return f"{where} ({', '.join(shown)})"


def _local_files(source: DataSourceConfig, synthetic_files: list[str] | None) -> tuple[str, list[str]]:
    """(builder, the local files it reads); no files for hub datasets."""
    if source.path == SYNTHETIC_SOURCE:
        return "json", list(synthetic_files or [])
    if source.path not in _LOCAL_BUILDERS or source.data_files is None:
        return source.path, []
    patterns = [source.data_files] if isinstance(source.data_files, str) else source.data_files
    return source.path, sorted({file for pattern in patterns for file in glob.glob(pattern)})


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _holds_no_rows(file: str, builder: str) -> bool:
    """Whether `file` is empty: no bytes, or a parquet file of 0 rows (read from its footer)."""
    if os.path.getsize(file) == 0:
        return True
    return builder == "parquet" and pq.ParquetFile(file).metadata.num_rows == 0


def _raise_naming_the_source(error: Exception, config: DataConfig, synthetic_files: list[str] | None) -> NoReturn:
    """Re-raise `error`, from reading the mixed stream, as a `DataSourceError` naming the source if one is at fault."""
    problem = diagnose_sources(config, synthetic_files)
    if problem is None:
        raise error
    raise DataSourceError(problem) from error


def _file_problem(source: DataSourceConfig, where: str, synthetic_files: list[str] | None) -> str | None:
    """`"<label>: FILE line N is not valid JSON: ..."` (or invalid UTF-8 at a byte) for the source's first bad file."""
    builder, files = _local_files(source, synthetic_files)
    if builder not in _TEXT_BUILDERS:
        return None
    for file in files:
        problem = text_file_problem(file, json_lines=builder == "json")
        if problem is not None:
            return f"{_label(source, where)}: {problem}"
    return None


def open_source(source: DataSourceConfig, where: str, synthetic_files: list[str] | None = None) -> IterableDataset:
    """Stream one source as an `IterableDataset` with a single `text` column. `where` names it in errors.

    Raises `DataSourceError` (a `ConfigError`) naming `where` and the file when the source has no files, only empty
    files, a file that is not UTF-8 or JSON Lines as its builder needs, or cannot be opened.
    """
    path, data_files = source.path, source.data_files
    if path == SYNTHETIC_SOURCE:
        if not synthetic_files:
            raise ValueError(f"{where}: the synthetic corpus has not been written (call synthetic_corpus_files first)")
        path, data_files = "json", synthetic_files
    if path in _LOCAL_BUILDERS:
        if data_files is None:
            raise DataSourceError(f"{where}.data_files must name the local files to read with the {path!r} builder")
        patterns = [data_files] if isinstance(data_files, str) else data_files
        missing = [p for p in patterns if not glob.glob(p) and "://" not in p]
        if missing:
            raise DataSourceError(f"{where}.data_files: no file matches {missing}")
        builder, files = _local_files(source, synthetic_files)
        if files and all(_holds_no_rows(file, builder) for file in files):
            empty = f"{files[0]} is" if len(files) == 1 else f"all {len(files)} files are"
            raise DataSourceError(f"{_label(source, where)} yields no text: {empty} empty")
    try:
        dataset = load_dataset(path, source.name, data_files=data_files, split=source.split, streaming=True)
    except (OSError, ValueError, StopIteration) as error:
        problem = _file_problem(source, where, synthetic_files)
        if problem is None and isinstance(error, StopIteration):  # the json builder found no row to read columns from
            problem = f"{_label(source, where)} yields no text"
        raise DataSourceError(problem or f"{_label(source, where)}: {_first_line(error)}") from error
    columns = dataset.column_names
    if columns == []:  # the json builder found rows of nothing (blank lines)
        raise DataSourceError(f"{_label(source, where)} yields no text")
    if columns is not None and source.text_field not in columns:
        raise DataSourceError(f"{where}.text_field: column {source.text_field!r} not in {columns}")
    dataset = dataset.select_columns([source.text_field])
    if source.text_field != "text":
        dataset = dataset.rename_column(source.text_field, "text")
    return dataset


def diagnose_sources(config: DataConfig, synthetic_files: list[str] | None = None) -> str | None:
    """Find the source behind a failed or empty stream: one line naming it and the file, or None if all read.

    Each source is checked alone, in config order: its files (UTF-8, JSON Lines), then whether it opens and yields
    a first document. Meant for the error path: it reads local text files to the first problem.
    """
    for i, source in enumerate(config.sources):
        where = f"data.sources.{i}"
        problem = _file_problem(source, where, synthetic_files)
        if problem is not None:
            return problem
        try:
            first = next(iter(open_source(source, where, synthetic_files)), None)
        except DataSourceError as error:
            return str(error)
        except Exception as error:  # any failure of this source alone names it
            return f"{_label(source, where)}: {_first_line(error)}"
        if first is None:
            return f"{_label(source, where)} yields no text"
    return None


def shard_split_note(num_shards: int, world_size: int) -> str | None:
    """What splitting a stream of `num_shards` shards over `world_size` ranks costs when the shards do not divide
    evenly (None when they do): every rank then reads the whole stream and keeps its share of the documents."""
    if world_size == 1 or num_shards % world_size == 0:
        return None
    return (
        f"the data stream has {num_shards} shard(s), not a multiple of the world size {world_size}: each rank reads "
        f"the whole stream and keeps one document in {world_size}, so the ranks train on disjoint documents and only "
        f"the reading is repeated on every rank; with a multiple of {world_size} shards (data.synthetic.n_shards for "
        "the generated corpus) each rank reads only its own shards"
    )


def _unsplit_documents(config: DataConfig, *, seed: int, synthetic_files: list[str] | None) -> IterableDataset:
    """The mixed (and shuffled, if configured) document stream of all ranks together."""
    sources = [
        open_source(source, f"data.sources.{i}", synthetic_files) for i, source in enumerate(config.sources)
    ]
    if len(sources) == 1:
        dataset = sources[0]
    else:
        total = sum(source.probability for source in config.sources)
        try:  # resolving the columns of the mix reads a first example of every source
            dataset = interleave_datasets(
                sources,
                probabilities=[source.probability / total for source in config.sources],
                seed=seed,
                stopping_strategy="all_exhausted",
            )
        except Exception as error:
            _raise_naming_the_source(error, config, synthetic_files)
    if config.shuffle_buffer:
        dataset = dataset.shuffle(seed=seed, buffer_size=config.shuffle_buffer)
    return dataset


def _rank_share(dataset: IterableDataset, *, rank: int, world_size: int, epoch: int) -> IterableDataset:
    if world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    dataset.set_epoch(epoch)
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
    number of shards, else every world_size-th document, which reads all shards on every rank; see
    `shard_split_note`).
    """
    dataset = _unsplit_documents(config, seed=seed, synthetic_files=synthetic_files)
    return _rank_share(dataset, rank=rank, world_size=world_size, epoch=epoch)


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
        dataset = _unsplit_documents(config, seed=seed, synthetic_files=synthetic_files)
        note = shard_split_note(dataset.num_shards, world_size)
        if note is not None and rank == 0:  # the same on every rank: said once, when the stream is set up
            logger.warning(note)
        self._dataset = _rank_share(dataset, rank=rank, world_size=world_size, epoch=0)
        self._iterator = None

    def next_document(self) -> str:
        """The next document text of this rank; at the end of the stream the next epoch starts."""
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self._dataset)
            try:
                example = next(self._iterator, None)
            except Exception as error:
                _raise_naming_the_source(error, self.config, self._open_kwargs["synthetic_files"])
            if example is not None:
                return example["text"]
            self._start_epoch(self.epoch + 1)
        problem = diagnose_sources(self.config, self._open_kwargs["synthetic_files"])
        raise DataSourceError(
            problem
            or f"the data stream of rank {self._open_kwargs['rank']} of {self._open_kwargs['world_size']} is empty: "
            "data.sources hold fewer documents (or shards) than there are ranks"
        )

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


__all__ = [
    "DataSourceError",
    "PackedTokenStream",
    "diagnose_sources",
    "mixed_documents",
    "open_source",
    "shard_split_note",
    "synthetic_corpus_files",
]
