"""What a checkpoint's tokenizer files hold, and loading them where the package is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from tiny_checkpoint import save_tiny_checkpoint

from quietstar import END_OF_THOUGHT, START_OF_THOUGHT, load_mistral_tokenizer
from quietstar.tokenizer import LOAD_TIME_KEYS
from quietstar.training.config import ModelConfig
from quietstar.training.model import load_tokenizer

CUSTOM_CODE_PROMPT = "Do you wish to run the custom code?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tokenizer_files") / "ckpt")


def test_tokenizer_config_stores_no_load_time_options(checkpoint, tmp_path):
    assert not set(LOAD_TIME_KEYS) & set(json.loads((checkpoint / "tokenizer_config.json").read_text()))
    assert not set(LOAD_TIME_KEYS) & set(load_mistral_tokenizer().init_kwargs)
    # The training loader reading a checkpoint's tokenizer (in offline mode here) saves none either.
    reloaded = load_tokenizer(ModelConfig(name_or_path=str(checkpoint)))
    reloaded.save_pretrained(tmp_path)
    assert not set(LOAD_TIME_KEYS) & set(json.loads((tmp_path / "tokenizer_config.json").read_text()))
    assert reloaded("Let x").input_ids == [1, 3169, 1318]


def test_tokenizer_loads_without_the_package_and_without_asking(checkpoint, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["quietstar"] = None  # the package is not importable in this process
        from transformers import AutoTokenizer, LlamaTokenizer
        for tokenizer in (
            AutoTokenizer.from_pretrained({str(checkpoint)!r}, trust_remote_code=True),
            LlamaTokenizer.from_pretrained({str(checkpoint)!r}),
        ):
            ids = tokenizer("Let x").input_ids + tokenizer.convert_tokens_to_ids([{START_OF_THOUGHT!r}, {END_OF_THOUGHT!r}])
            print("ids", ids, tokenizer.pad_token == tokenizer.eos_token)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert CUSTOM_CODE_PROMPT not in result.stdout + result.stderr
    assert result.stdout.splitlines() == ["ids [1, 3169, 1318, 32000, 32001] True"] * 2
