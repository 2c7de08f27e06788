"""The report tokenizer: byte-level BPE trained on the project's own report text.

The special tokens take the ids :class:`~modeling_pasta.configuration_pasta.PastaTextConfig`
expects (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3). Encoding appends ``</s>``, so a
tokenised report is directly the ``labels`` of :class:`PastaForReportGeneration` (the model
prepends ``<s>`` itself). The result is a standard ``PreTrainedTokenizerFast``: ``save_pretrained``
writes ``tokenizer.json`` beside the model and ``AutoTokenizer.from_pretrained`` reads it back
without remote code.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def train_report_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    *,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on report texts.

    Args:
        texts: report texts (any iterable; read once).
        vocab_size: upper bound of the vocabulary (256 byte symbols + 4 special tokens + merges);
            a small corpus may stop earlier, so size the model with ``len(tokenizer)``.
        min_frequency: a merge needs this many occurrences.
        model_max_length: longest sequence the tokenizer reports as valid (match the model's
            ``max_position_embeddings``).

    Raises:
        ValueError: when ``vocab_size`` cannot hold the byte alphabet and special tokens.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


__all__ = ["SPECIAL_TOKENS", "train_report_tokenizer"]
