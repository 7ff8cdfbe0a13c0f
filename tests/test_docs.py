"""The README, the docs and every command's --help refer only to files that exist in the repository."""

import importlib
import re
from pathlib import Path

import pytest
import torch
from scripts import load_script
from tiny import tiny_config

from quietstar.models.modeling_quietstar_mistral import QuietStarMixingHead

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("docs", "quietstar", "kernels", "configs", "scripts", "benchmarks", "experiments", "tests")
# a path under one of the repository's top-level folders, or a top-level file; ends on a word character
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(TOP_LEVEL) + r")/[\w./<>{}*,-]*[\w/]|train\.py|pyproject\.toml|README\.md)"
)
# any markdown file name, bare or with a relative path (documents must be ones a user of the repository has)
MARKDOWN_NAME = re.compile(r"(?<![\w./<>{}-])((?:\.\./|[\w-]+/)*[\w-]+\.md)(?!\w)")
CLIS = {
    "python train.py": ("file", REPO_ROOT / "train.py"),
    "python -m quietstar.eval": ("module", "quietstar.eval.__main__"),
    "python -m quietstar.eval.inspector": ("module", "quietstar.eval.inspector"),
    "python -m quietstar.eval.generate": ("module", "quietstar.eval.generate"),
    "python -m quietstar.tools.convert_reference": ("module", "quietstar.tools.convert_reference"),
    **{
        f"python {path.relative_to(REPO_ROOT).as_posix()}": ("file", path)
        for folder in ("benchmarks", "experiments")
        for path in sorted((REPO_ROOT / folder).glob("*.py"))
        if path.name != "common.py"  # the scripts' shared helpers, not a command
    },
}


def referenced_paths(text: str) -> list[str]:
    """Repository paths named in `text`, without patterns such as `attention_<device>.json` or `*.yaml`."""
    return [path for path in REPO_PATH.findall(text) if not set(path) & set("<>{}*,")]


def missing_markdown(text: str) -> list[str]:
    """Documents named in `text` that the repository does not have: markdown paths with a folder (outside the folders
    git ignores, where runs write their reports) and upper-case document names such as `NOTES.md`, which may live in
    any folder. Lower-case bare names are reports a command writes."""
    markdown = {path.relative_to(REPO_ROOT).as_posix() for folder in ("", *TOP_LEVEL) for path in
                (REPO_ROOT / folder).glob("**/*.md" if folder else "*.md")}
    names = {path.rsplit("/", 1)[-1] for path in markdown}
    ignored = tuple(line.strip() for line in (REPO_ROOT / ".gitignore").read_text().splitlines() if line.endswith("/"))
    missing = []
    for name in MARKDOWN_NAME.findall(text):
        if "/" in name and not name.startswith(ignored) and name not in markdown:
            missing.append(name)
        elif "/" not in name and name[:-3].isupper() and name not in names:
            missing.append(name)
    return missing


def assert_refers_to_repository_files_only(text: str, where: str) -> None:
    assert "/work/" not in text, where
    missing = [path for path in referenced_paths(text) if not (REPO_ROOT / path).exists()] + missing_markdown(text)
    assert not missing, f"{where} names files that are not in the repository: {missing}"


def test_path_patterns_find_repository_paths_and_foreign_documents():
    text = "see docs/design.md, 'Attention' and `configs/tiny.yaml`; writes benchmarks/results/attention_<device>.json"
    assert referenced_paths(text) == ["docs/design.md", "configs/tiny.yaml"] and missing_markdown(text) == []
    foreign = "the roofline of NOTES.md section 3; see ../shared/notes.md and background/peers.md; README.md"
    assert missing_markdown(foreign) == ["NOTES.md", "../shared/notes.md", "background/peers.md"]
    written = "writes report.md to benchmark_runs/study/report.md"
    assert missing_markdown(written) == []


@pytest.mark.parametrize("document", ["README.md", "docs/design.md"])
def test_documents_name_only_files_in_the_repository(document):
    text = (REPO_ROOT / document).read_text()
    assert_refers_to_repository_files_only(text, document)
    assert len(referenced_paths(text)) >= 3


def test_readme_points_at_the_design_document():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/design.md" in readme
    design = (REPO_ROOT / "docs" / "design.md").read_text()
    for heading in ("## Passes and positions", "## Attention", "## Mixing", "## Loss and rewards", "## Thought ids",
                    "## Defaults"):
        assert heading in design, heading


def test_readme_explains_an_unbounded_mixing_weight_and_it_is_unbounded():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "The mixing weight w is unbounded" in readme and "h = h_base - |w| (h_thought - h_base)" in readme
    head = QuietStarMixingHead(tiny_config())
    torch.manual_seed(0)
    h_base, h_thought = torch.randn(2, 5, 64).unbind(0)
    with torch.no_grad():
        head.output.weight.fill_(-1.0)  # drives w below 0: nothing squashes it into [0, 1]
        mixed, weight = head.mix(h_base, h_thought)
    assert (weight < 0).all() and (weight < -1).any()
    torch.testing.assert_close(mixed, h_base - weight.abs() * (h_thought - h_base), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("command", sorted(CLIS))
def test_help_names_only_files_in_the_repository(command, capsys):
    kind, target = CLIS[command]
    if kind == "module":
        module = importlib.import_module(target)
    else:
        module = load_script(target, f"cli_{target.stem}")
    with pytest.raises(SystemExit) as stopped:
        module.main(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:"), command
    assert_refers_to_repository_files_only(text, command)
