"""A procedurally generated corpus of arithmetic and algebra problems with worked steps (the offline training data).

Every document is a few problems, each stated, solved step by step and checked, so a model that "thinks" about the
next tokens can profit from it. Generation is deterministic in (n_documents, n_shards, seed); the corpus is written
as jsonl shards (`{"text": ...}` per line) and read back through the same local-file path as any other dataset.
"""

import json
import logging
import random
from pathlib import Path

from ..atomic_files import atomic_directory

logger = logging.getLogger(__name__)

_NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jun", "Kira", "Liam", "Maya"]
_ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "eggs", "stickers"]
_VARIABLES = "xyzabnmt"


def _addition(rng: random.Random) -> str:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for place, name in enumerate(["ones", "tens", "hundreds", "thousands"][: max(len(da), len(db))]):
        x, y = int(da[place]) if place < len(da) else 0, int(db[place]) if place < len(db) else 0
        total = x + y + carry
        extra = f" + {carry}" if carry else ""
        steps.append(f"Add the {name}: {x} + {y}{extra} = {total}, write {total % 10}" + (", carry 1." if total >= 10 else "."))
        carry = total // 10
    if carry:
        steps.append("Write the final carry 1.")
    return f"Compute {a} + {b}. " + " ".join(steps) + f" So {a} + {b} = {a + b}."


def _subtraction(rng: random.Random) -> str:
    a, b = rng.randint(50, 999), rng.randint(10, 49)
    tens, ones = b // 10 * 10, b % 10
    middle = a - tens
    return (
        f"Compute {a} - {b}. Split {b} into {tens} + {ones}. First {a} - {tens} = {middle}. "
        f"Then {middle} - {ones} = {middle - ones}. So {a} - {b} = {a - b}."
    )


def _multiplication(rng: random.Random) -> str:
    a, b = rng.randint(11, 99), rng.randint(2, 9)
    tens, ones = a // 10 * 10, a % 10
    return (
        f"Compute {a} * {b}. Write {a} = {tens} + {ones}. Then {tens} * {b} = {tens * b} and {ones} * {b} = "
        f"{ones * b}. Add: {tens * b} + {ones * b} = {a * b}. So {a} * {b} = {a * b}."
    )


def _linear_equation(rng: random.Random) -> str:
    var = rng.choice(_VARIABLES)
    a, x, b = rng.randint(2, 9), rng.randint(-12, 12), rng.randint(1, 30)
    c = a * x + b
    return (
        f"Solve {a}{var} + {b} = {c}. Subtract {b} from both sides: {a}{var} = {c - b}. "
        f"Divide both sides by {a}: {var} = {x}. Check: {a} * {x} + {b} = {a * x} + {b} = {c}. So {var} = {x}."
    )


def _like_terms(rng: random.Random) -> str:
    u, v = rng.sample(_VARIABLES, 2)
    a, b, c, d = (rng.randint(1, 9) for _ in range(4))
    return (
        f"Simplify {a}{u} + {b}{v} + {c}{u} + {d}{v}. Group the {u} terms: {a}{u} + {c}{u} = {a + c}{u}. "
        f"Group the {v} terms: {b}{v} + {d}{v} = {b + d}{v}. So the result is {a + c}{u} + {b + d}{v}."
    )


def _distribute(rng: random.Random) -> str:
    var = rng.choice(_VARIABLES)
    a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 20)
    return (
        f"Expand {a}({var} + {b}) + {c}. Multiply out: {a} * {var} = {a}{var} and {a} * {b} = {a * b}. "
        f"Add the constants: {a * b} + {c} = {a * b + c}. So {a}({var} + {b}) + {c} = {a}{var} + {a * b + c}."
    )


def _word_problem(rng: random.Random) -> str:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, bags, per_bag, given = rng.randint(3, 30), rng.randint(2, 6), rng.randint(2, 12), rng.randint(1, 5)
    bought = bags * per_bag
    return (
        f"{name} has {start} {item} and buys {bags} bags with {per_bag} {item} each, then gives away {given}. "
        f"How many {item} does {name} have? The bags hold {bags} * {per_bag} = {bought} {item}. "
        f"Together: {start} + {bought} = {start + bought}. After giving {given} away: {start + bought} - {given} = "
        f"{start + bought - given}. The answer is {start + bought - given}."
    )


PROBLEMS = (_addition, _subtraction, _multiplication, _linear_equation, _like_terms, _distribute, _word_problem)


def synthetic_document(rng: random.Random) -> str:
    """One document: 2 to 5 worked problems separated by blank lines."""
    return "\n\n".join(rng.choice(PROBLEMS)(rng) for _ in range(rng.randint(2, 5)))


def write_synthetic_corpus(directory: str | Path, n_documents: int, n_shards: int, seed: int) -> list[str]:
    """Write the corpus as `n_shards` jsonl files under `directory` and return their paths (sorted).

    Reuses the files when `directory` already holds a corpus made with the same settings. The shards are written
    into a staging sibling directory that takes the name when complete (`atomic_directory`), so an interrupted
    write is never read.
    """
    directory = Path(directory)
    settings = {"n_documents": n_documents, "n_shards": n_shards, "seed": seed}
    manifest = directory / "corpus.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == settings:
        return sorted(str(p) for p in directory.glob("shard-*.jsonl"))
    if directory.exists():
        raise FileExistsError(
            f"{directory} exists but does not hold a synthetic corpus with settings {settings}; remove it or set "
            "data.synthetic.directory elsewhere"
        )
    logger.info("writing %d synthetic documents in %d shards to %s", n_documents, n_shards, directory)
    with atomic_directory(directory) as staging:
        rng = random.Random(seed)
        shards = [open(staging / f"shard-{i:05d}.jsonl", "w") for i in range(n_shards)]
        for index in range(n_documents):
            shards[index % n_shards].write(json.dumps({"text": synthetic_document(rng)}) + "\n")
        for shard in shards:
            shard.close()
        (staging / "corpus.json").write_text(json.dumps(settings))
    return sorted(str(p) for p in directory.glob("shard-*.jsonl"))
