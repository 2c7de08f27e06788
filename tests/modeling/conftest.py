"""Fixtures of the model tests: a report corpus and the tokenizer trained on it."""

from __future__ import annotations

import pytest
import torch
from pasta_testing import report_corpus

from modeling_pasta.tokenization_pasta import train_report_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def report_texts() -> list[str]:
    return report_corpus()


@pytest.fixture(scope="session")
def report_tokenizer(report_texts):
    return train_report_tokenizer(report_texts, vocab_size=320)
