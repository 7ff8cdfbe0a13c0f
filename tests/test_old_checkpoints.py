"""Checkpoints saved by quietstar 0.1 (the flat layout, before `quietstar/models/`) load with today's package.

`tests/fixtures/v0_1_checkpoints/<family>/` holds one tiny checkpoint per family written by quietstar 0.1 with its
own remote code, and `expected.pt`, the eval-mode logits 0.1 computed for two rows (one left-padded) with and
without thinking. Each is loaded three ways: through the package's Auto registration (today's classes), with
`trust_remote_code=True` (0.1's code stored in the checkpoint) while the package is importable, and with
`trust_remote_code=True` in a process where the package cannot be imported.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny import FAMILY_NAMES
from transformers import AutoModelForCausalLM

import quietstar

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1_checkpoints"


def old_checkpoint(tmp_path: Path, family: str) -> Path:
    """A private copy of the 0.1 checkpoint of `family` (its directory name keys transformers' module cache)."""
    return Path(shutil.copytree(FIXTURES / family, tmp_path / f"v0_1_{family}"))


def assert_same_logits(model, expected: dict) -> None:
    with torch.no_grad():
        thinking = model(expected["input_ids"], attention_mask=expected["attention_mask"]).logits
        plain = model(expected["input_ids"], attention_mask=expected["attention_mask"], thinking=False).logits
    torch.testing.assert_close(thinking, expected["thinking"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, expected["plain"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_package_route_loads_a_0_1_checkpoint_into_todays_class(tmp_path, family):
    checkpoint = old_checkpoint(tmp_path, family)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    assert type(model) is quietstar.family_of(family).model_class
    assert model.config.model_type == json.loads((checkpoint / "config.json").read_text())["model_type"]
    assert_same_logits(model, torch.load(checkpoint / "expected.pt", weights_only=True))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_trust_remote_code_after_import_quietstar_uses_todays_class(tmp_path, monkeypatch, family):
    """With the package imported its registered class wins over the checkpoint's code, as for any Auto class."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    checkpoint = old_checkpoint(tmp_path, family)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert type(model) is quietstar.family_of(family).model_class
    assert_same_logits(model, torch.load(checkpoint / "expected.pt", weights_only=True))


@pytest.mark.parametrize("package", ["installed, not imported", "not importable"])
def test_remote_code_route_runs_the_checkpoints_own_code(tmp_path, package):
    checkpoints = [old_checkpoint(tmp_path, family) for family in FAMILY_NAMES]
    block_package = 'sys.modules["quietstar"] = None' if package == "not importable" else ""
    script = textwrap.dedent(
        f"""
        import sys
        {block_package}
        import torch
        from transformers import AutoModelForCausalLM
        for checkpoint in {[str(path) for path in checkpoints]!r}:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            expected = torch.load(checkpoint + "/expected.pt", weights_only=True)
            inputs = dict(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"])
            with torch.no_grad():
                torch.testing.assert_close(model(**inputs).logits, expected["thinking"], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(
                    model(**inputs, thinking=False).logits, expected["plain"], rtol=1e-5, atol=1e-5
                )
        assert ("quietstar" in sys.modules) == {package == "not importable"!r}
        print("old checkpoints ok")
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "old checkpoints ok" in result.stdout


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_resaving_a_0_1_checkpoint_writes_todays_code_under_the_same_model_type(tmp_path, family):
    checkpoint = old_checkpoint(tmp_path, family)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    model.save_pretrained(tmp_path / "resaved")
    old_files = {path.name for path in checkpoint.glob("*.py")}
    new_files = {path.name for path in (tmp_path / "resaved").glob("*.py")}
    package_files = {path.name for path in Path(quietstar.models.__file__).parent.glob("*.py")}
    assert new_files <= package_files and new_files != old_files
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert resaved["model_type"] == json.loads((checkpoint / "config.json").read_text())["model_type"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved").eval()
    assert_same_logits(reloaded, torch.load(checkpoint / "expected.pt", weights_only=True))
