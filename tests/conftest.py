"""Shared test set-up: offline switches for the hub, datasets and wandb, and the shipped Mistral tokenizer."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import quietstar  # noqa: E402  (registers the Auto classes after the offline switches are set)


@pytest.fixture(scope="session")
def mistral_tokenizer():
    return quietstar.load_mistral_tokenizer()
