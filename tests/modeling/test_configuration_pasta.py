"""PastaConfig defaults, validation messages, serialisation, and the registry of named variants."""

from __future__ import annotations

import pytest
import torch
from pasta_testing import tiny_config

from modeling_pasta.configuration_pasta import PastaConfig, PastaTextConfig
from modeling_pasta.modeling_pasta import PastaForReportGeneration, PastaForSegmentation
from modeling_pasta.report import CATEGORICAL_ATTRIBUTES, LESION_TYPES, PHASES
from modeling_pasta.variants import PASTA_VARIANTS, list_variants, pasta_config


def test_default_labels_and_tasks_follow_the_report_schema():
    config = PastaConfig()
    assert config.id2label[0] == "background" and config.id2label[config.num_labels - 1] == "lesion"
    assert config.lesion_label_id == config.num_labels - 1
    assert {"liver", "kidney_left", "kidney_right", "lung_upper_lobe_right", "vertebrae", "pancreas"} <= set(
        config.label2id
    )
    tasks = config.classification_tasks
    assert tasks["lesion_type"] == ["none", *LESION_TYPES] and len(tasks["lesion_type"]) == 16
    assert tasks["phase"] == list(PHASES) and tasks["detection"] == ["absent", "present"]
    for attribute, classes in CATEGORICAL_ATTRIBUTES.items():
        assert tasks[attribute] == list(classes)
    assert isinstance(config.text_config, PastaTextConfig)
    assert config.get_text_config(decoder=True) is config.text_config


def test_save_and_load_keep_every_field(tmp_path):
    config = tiny_config(classification_tasks={"t_stage": ["T1", "T2", "T3", "T4"]}, scan_level_tasks=[], in_channels=2)
    config.save_pretrained(tmp_path)
    loaded = PastaConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == config.id2label and isinstance(next(iter(loaded.id2label)), int)
    assert loaded.text_config.hidden_size == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depths": [1, 1]}, "depths has 2 entries but hidden_sizes has 3"),
        ({"decoder_depths": [1]}, "decoder_depths needs 2 entries"),
        ({"in_channels": 3}, r"in_channels must be 1 \(CT\) or 2 \(PET/CT\), got 3"),
        ({"patch_size": [16, 18, 16]}, "divisible by 4"),
        ({"scan_level_tasks": ["survival"]}, "scan_level_tasks \\['survival'\\] are not classification tasks"),
        ({"classification_tasks": {"t_stage": ["T1"]}, "scan_level_tasks": []}, "needs at least 2 classes"),
        ({"intensity_scheme": "minmax"}, "intensity_scheme"),
        ({"text_config": {"hidden_size": 30, "num_attention_heads": 4}}, "divisible by num_attention_heads"),
    ],
)
def test_validation_names_the_problem(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize("name", list_variants())
def test_every_variant_builds(name):
    config = pasta_config(name)
    assert config.num_stages == len(config.hidden_sizes)
    with torch.device("meta"):
        segmentation = PastaForSegmentation(config)
        report = PastaForReportGeneration(config)
    millions = sum(p.numel() for p in segmentation.parameters()) / 1e6
    expected = {"pasta_tiny": (0.0, 0.1), "pasta_small": (3.0, 10.0), "pasta_base": (200.0, 300.0)}[name]
    assert expected[0] < millions < expected[1], millions
    assert sum(p.numel() for p in report.text_decoder.parameters()) > 0


def test_variant_overrides_and_unknown_names():
    config = pasta_config("pasta_small", in_channels=2, text_config={"vocab_size": 1000})
    assert config.in_channels == 2 and config.text_config.vocab_size == 1000
    assert config.text_config.hidden_size == PASTA_VARIANTS["pasta_small"]["text_config"]["hidden_size"]
    with pytest.raises(KeyError, match="choose one of"):
        pasta_config("pasta_huge")
