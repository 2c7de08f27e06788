"""Named PASTA variants: a registry of configurations that differ by size only (timm style).

- ``pasta_tiny``: a few thousand parameters, 16^3 patches; for tests.
- ``pasta_small``: about 5 M parameters, 64^3 patches at 1.5 mm; the shipped model, trainable on CPU.
- ``pasta_base``: about the original PASTA's size (5 residual stages, 64 -> 1024 features,
  ~240 M parameters), 128^3 patches at 1 mm; for GPUs.
"""

from __future__ import annotations

from typing import Any

from .configuration_pasta import PastaConfig

PASTA_VARIANTS: dict[str, dict[str, Any]] = {
    "pasta_tiny": {
        "hidden_sizes": [4, 8, 16],
        "depths": [1, 1, 1],
        "decoder_depths": [1, 1],
        "patch_size": [16, 16, 16],
        "target_spacing_mm": [4.0, 4.0, 4.0],
        "mim_block_size": [4, 4, 4],
        "text_config": {
            "vocab_size": 256,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
            "dropout": 0.0,
        },
    },
    "pasta_small": {
        "hidden_sizes": [16, 32, 64, 128, 256],
        "depths": [2, 2, 2, 2, 2],
        "decoder_depths": [2, 2, 2, 2],
        "patch_size": [64, 64, 64],
        "target_spacing_mm": [1.5, 1.5, 1.5],
        "mim_block_size": [16, 16, 16],
        "text_config": {
            "vocab_size": 4096,
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 1024,
            "max_position_embeddings": 512,
        },
    },
    "pasta_base": {
        "encoder_type": "residual",
        "hidden_sizes": [64, 128, 256, 512, 1024],
        "depths": [1, 2, 3, 3, 3],
        "decoder_depths": [2, 2, 2, 2],
        "patch_size": [128, 128, 128],
        "target_spacing_mm": [1.0, 1.0, 1.0],
        "mim_block_size": [16, 16, 16],
        "text_config": {
            "vocab_size": 8192,
            "hidden_size": 512,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "intermediate_size": 2048,
            "max_position_embeddings": 1024,
        },
    },
}


def list_variants() -> list[str]:
    """Names of the registered variants."""
    return sorted(PASTA_VARIANTS)


def pasta_config(name: str, **overrides: Any) -> PastaConfig:
    """The :class:`PastaConfig` of a named variant, with keyword overrides.

    ``text_config`` overrides are merged into the variant's text decoder settings.

    Raises:
        KeyError: for an unknown variant name, listing the known ones.
    """
    if name not in PASTA_VARIANTS:
        raise KeyError(f"unknown PASTA variant {name!r}; choose one of {list_variants()}")
    settings = {key: (dict(value) if isinstance(value, dict) else value) for key, value in PASTA_VARIANTS[name].items()}
    text_overrides = overrides.pop("text_config", None) or {}
    settings["text_config"] = {**settings["text_config"], **dict(text_overrides)}
    settings.update(overrides)
    return PastaConfig(**settings)
