"""The report tokenizer: special ids the model expects, lossless decoding, save and load."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from modeling_pasta.configuration_pasta import PastaTextConfig
from modeling_pasta.tokenization_pasta import train_report_tokenizer


def test_special_tokens_match_the_text_config(report_tokenizer):
    text_config = PastaTextConfig()
    assert report_tokenizer.pad_token_id == text_config.pad_token_id
    assert report_tokenizer.bos_token_id == text_config.bos_token_id == text_config.decoder_start_token_id
    assert report_tokenizer.eos_token_id == text_config.eos_token_id


def test_encoding_ends_with_eos_and_decodes_losslessly(report_tokenizer, report_texts):
    for text in report_texts[:8]:
        ids = report_tokenizer(text)["input_ids"]
        assert ids[-1] == report_tokenizer.eos_token_id and report_tokenizer.bos_token_id not in ids
        assert report_tokenizer.decode(ids, skip_special_tokens=True) == text
    # text never seen in training still round-trips (byte-level: no unknown tokens)
    unseen = "Ösophagus: 7 mm Läsion — ±3 HU."
    assert report_tokenizer.decode(report_tokenizer(unseen)["input_ids"], skip_special_tokens=True) == unseen
    assert len(report_tokenizer) <= 320


def test_save_and_load_with_auto_tokenizer(report_tokenizer, report_texts, tmp_path):
    report_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    batch = loaded(report_texts[:3], padding=True)
    assert batch["input_ids"] == report_tokenizer(report_texts[:3], padding=True)["input_ids"]
    assert loaded.pad_token_id == 0


def test_vocabulary_too_small_for_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size must be at least 260"):
        train_report_tokenizer(["a report"], vocab_size=100)
