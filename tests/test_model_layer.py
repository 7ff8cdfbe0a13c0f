"""The rule of `quietstar/models/`: it holds exactly the files a checkpoint carries, and they import only each other.

`save_pretrained` copies a family's configuration and modeling modules into the checkpoint, together with every
sibling they import relatively, flat into one directory; `trust_remote_code=True` runs them from there. So a module
of the model layer may import the standard library, torch, transformers, einops and its siblings, and nothing else
of the package (anything else is missing from the checkpoint).
"""

import ast
import sys
from pathlib import Path

import pytest
from tiny import FAMILY_NAMES, tiny_model

import quietstar.models

MODELS_DIR = Path(quietstar.models.__file__).resolve().parent
MODULES = sorted(path for path in MODELS_DIR.glob("*.py") if path.name != "__init__.py")
THIRD_PARTY = {"torch", "transformers", "einops", "huggingface_hub", "safetensors"}


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(top-level absolute imports, sibling modules imported relatively) of the module at `path`."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add(node.module.split(".")[0])
            else:
                assert node.level == 1 and node.module, f"{path.name}: import from outside the model layer"
                relative.add(node.module)
    return absolute, relative


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_model_layer_modules_import_only_siblings_and_libraries(path):
    absolute, relative = imports_of(path)
    outside = absolute - THIRD_PARTY - set(sys.stdlib_module_names)
    assert not outside, f"{path.name} imports {outside}, which a checkpoint does not carry"
    assert all((MODELS_DIR / f"{module}.py").exists() for module in relative), relative


def carried_files(family: str) -> set[str]:
    """The modules `save_pretrained` copies for `family`: its two entry modules and their sibling imports."""
    todo = [f"configuration_quietstar_{family}", f"modeling_quietstar_{family}"]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports_of(MODELS_DIR / f"{module}.py")[1])
    return {f"{module}.py" for module in seen}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_checkpoint_carries_its_familys_closure_of_the_model_layer(tmp_path, family):
    tiny_model(family=family).save_pretrained(tmp_path)
    assert {path.name for path in tmp_path.glob("*.py")} == carried_files(family)


def test_the_model_layer_is_exactly_what_checkpoints_carry():
    carried = set().union(*(carried_files(family) for family in FAMILY_NAMES))
    assert carried == {path.name for path in MODULES}
