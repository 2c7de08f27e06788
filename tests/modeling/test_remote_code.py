"""Checkpoints load with ``trust_remote_code=True`` in a fresh process that never imports this package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from pasta_testing import tiny_config

from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.modeling_pasta import PastaForReportGeneration, PastaForSegmentation, PastaForSurvival

REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from transformers import (
        AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageSegmentation,
        AutoModelForImageTextToText, AutoTokenizer,
    )
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    segmentation_dir, report_dir, survival_dir, inputs_path = sys.argv[1:5]
    pixel_values = torch.from_numpy(np.load(inputs_path))
    out = {}
    config = AutoConfig.from_pretrained(segmentation_dir, trust_remote_code=True)
    out["config_class"] = type(config).__name__
    backbone = AutoModel.from_pretrained(segmentation_dir, trust_remote_code=True).eval()
    out["backbone_class"] = type(backbone).__name__
    segmentation = AutoModelForImageSegmentation.from_pretrained(segmentation_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        out["segmentation_logits"] = segmentation(pixel_values=pixel_values).logits.numpy().tolist()
        out["backbone_pooled"] = backbone(pixel_values).pooler_output.numpy().tolist()
    processor = AutoImageProcessor.from_pretrained(segmentation_dir, trust_remote_code=True)
    out["processor"] = [type(processor).__name__, processor.target_spacing_mm]
    report_model = AutoModelForImageTextToText.from_pretrained(report_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(report_dir)
    ids = report_model.generate(pixel_values=pixel_values[:1], do_sample=False, max_new_tokens=6)
    out["report_text"] = tokenizer.decode(ids[0], skip_special_tokens=True)
    survival_class = get_class_from_dynamic_module("modeling_pasta.PastaForSurvival", survival_dir)
    survival = survival_class.from_pretrained(survival_dir).eval()
    with torch.no_grad():
        out["risk_scores"] = survival(pixel_values=pixel_values).risk_scores.numpy().tolist()
    out["package_imported"] = sorted(m for m in sys.modules if m == "modeling_pasta" or m.startswith("modeling_pasta."))
    out["model_module"] = type(segmentation).__module__
    print("RESULT" + json.dumps(out))
    """
)


def test_auto_classes_resolve_locally_after_importing_the_package(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForImageSegmentation

    import modeling_pasta

    modeling_pasta.register_auto_classes()
    PastaForSegmentation(tiny_config()).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), modeling_pasta.PastaConfig)
    assert type(AutoModelForImageSegmentation.from_pretrained(tmp_path)) is PastaForSegmentation
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "PastaModel"


@pytest.mark.slow
def test_remote_code_load_in_a_fresh_process(tmp_path, report_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(text_config={"vocab_size": len(report_tokenizer)})
    pixel_values = torch.randn(2, 1, 16, 16, 16)
    np.save(tmp_path / "inputs.npy", pixel_values.numpy())

    segmentation = PastaForSegmentation(config).eval()
    segmentation.save_pretrained(tmp_path / "segmentation")
    PastaImageProcessor.from_model_config(config).save_pretrained(tmp_path / "segmentation")
    report_model = PastaForReportGeneration(config).eval()
    report_model.save_pretrained(tmp_path / "report")
    report_tokenizer.save_pretrained(tmp_path / "report")
    survival = PastaForSurvival(config).eval()
    survival.save_pretrained(tmp_path / "survival")

    saved = json.loads((tmp_path / "segmentation" / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_pasta.PastaModel"
    assert saved["auto_map"]["AutoModelForImageSegmentation"] == "modeling_pasta.PastaForSegmentation"
    assert saved["auto_map"]["AutoConfig"] == "configuration_pasta.PastaConfig"
    processor_json = json.loads((tmp_path / "segmentation" / "preprocessor_config.json").read_text())
    assert processor_json["auto_map"]["AutoImageProcessor"] == "image_processing_pasta.PastaImageProcessor"

    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(tmp_path / "segmentation"),
            str(tmp_path / "report"),
            str(tmp_path / "survival"),
            str(tmp_path / "inputs.npy"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])

    assert out["package_imported"] == []
    assert out["model_module"].startswith("transformers_modules.")
    assert out["config_class"] == "PastaConfig" and out["backbone_class"] == "PastaModel"
    assert out["processor"] == ["PastaImageProcessor", list(config.target_spacing_mm)]
    with torch.no_grad():
        np.testing.assert_allclose(
            out["segmentation_logits"], segmentation(pixel_values).logits.numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            out["backbone_pooled"], segmentation.pasta(pixel_values).pooler_output.numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(out["risk_scores"], survival(pixel_values).risk_scores.numpy(), rtol=1e-5, atol=1e-6)
    expected_ids = report_model.generate(pixel_values=pixel_values[:1], do_sample=False, max_new_tokens=6)
    assert out["report_text"] == report_tokenizer.decode(expected_ids[0], skip_special_tokens=True)
