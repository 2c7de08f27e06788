"""Every PASTA head on a tiny configuration: shapes, losses, backward, save/load, MAE masking, generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pasta_testing import tiny_config

from modeling_pasta.modeling_pasta import (
    PastaForClassification,
    PastaForMaskedImageModeling,
    PastaForReportGeneration,
    PastaForSegmentation,
    PastaForSurvival,
    PastaModel,
    cox_partial_likelihood_loss,
    random_block_mask,
)

BATCH, SIZE = 2, 16


def _inputs(config, batch: int = BATCH, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, config.in_channels, size, size, size, generator=torch.Generator().manual_seed(0))


def _labels_for(model, config, pixel_values: torch.Tensor):
    generator = torch.Generator().manual_seed(1)
    batch = pixel_values.shape[0]
    if isinstance(model, PastaForSegmentation):
        return torch.randint(0, config.num_labels, (batch, *pixel_values.shape[2:]), generator=generator)
    if isinstance(model, PastaForClassification):
        return {
            task: torch.randint(0, len(c), (batch,), generator=generator)
            for task, c in config.classification_tasks.items()
        }
    if isinstance(model, PastaForSurvival):
        return torch.tensor([[3.0, 1.0], [5.0, 0.0]])
    if isinstance(model, PastaForReportGeneration):
        return torch.randint(4, config.text_config.vocab_size, (batch, 7), generator=generator)
    return None


def _main_output(model, output) -> torch.Tensor:
    if isinstance(model, PastaModel):
        return output.decoder_last_hidden_state
    if isinstance(model, PastaForClassification):
        return torch.cat([output.logits[t] for t in sorted(output.logits)], dim=1)
    if isinstance(model, PastaForSurvival):
        return output.risk_scores
    if isinstance(model, PastaForMaskedImageModeling):
        return output.reconstruction
    return output.logits


def _call(model, config, pixel_values, labels=None):
    kwargs = {"pixel_values": pixel_values}
    if isinstance(model, PastaForMaskedImageModeling):
        kwargs["bool_masked_pos"] = random_block_mask(
            tuple(pixel_values.shape), (4, 4, 4), 0.5, generator=torch.Generator().manual_seed(2)
        )
    if isinstance(model, PastaForReportGeneration) and labels is None:
        kwargs["decoder_input_ids"] = torch.tensor([[1, 5, 9, 12]] * pixel_values.shape[0])
    if labels is not None:
        kwargs["labels"] = labels
    return model(**kwargs)


HEADS = [
    PastaModel,
    PastaForSegmentation,
    PastaForClassification,
    PastaForSurvival,
    PastaForMaskedImageModeling,
    PastaForReportGeneration,
]


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_shapes_loss_and_backward(model_class):
    torch.manual_seed(0)
    config = tiny_config()
    model = model_class(config)
    pixel_values = _inputs(config)
    labels = _labels_for(model, config, pixel_values)
    output = _call(model, config, pixel_values, labels)

    if model_class is PastaModel:
        assert output.last_hidden_state.shape == (BATCH, 16, 4, 4, 4)
        assert output.pooler_output.shape == (BATCH, 4 + 8 + 16)
        assert output.decoder_last_hidden_state.shape == (BATCH, 4, SIZE, SIZE, SIZE)
        loss = output.decoder_last_hidden_state.square().mean()
    else:
        loss = output.loss
        assert loss is not None and torch.isfinite(loss)
    if model_class is PastaForSegmentation:
        assert output.logits.shape == (BATCH, config.num_labels, SIZE, SIZE, SIZE)
    if model_class is PastaForClassification:
        assert {t: v.shape for t, v in output.logits.items()} == {
            t: (BATCH, len(c)) for t, c in config.classification_tasks.items()
        }
    if model_class is PastaForSurvival:
        assert output.risk_scores.shape == (BATCH,)
    if model_class is PastaForMaskedImageModeling:
        assert output.reconstruction.shape == pixel_values.shape
    if model_class is PastaForReportGeneration:
        assert output.logits.shape == (BATCH, 7, config.text_config.vocab_size)

    loss.backward()
    first_conv = (
        model.get_submodule("encoder" if model_class is PastaModel else "pasta.encoder").stages[0].blocks[0].conv
    )
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_save_and_load_give_identical_outputs(model_class, tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = model_class(config).eval()
    pixel_values = _inputs(config)
    with torch.no_grad():
        expected = _main_output(model, _call(model, config, pixel_values))
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert {"config.json", "configuration_pasta.py", "modeling_pasta.py", "organs.py", "report.py"} <= files
    loaded = model_class.from_pretrained(tmp_path).eval()
    expected_state = model.state_dict()
    assert loaded.state_dict().keys() == expected_state.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected_state[name]), name
    with torch.no_grad():
        actual = _main_output(loaded, _call(loaded, config, pixel_values))
    # identical weights; the loaded tensors' memory layout may pick another kernel (last-bit differences)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def test_heads_share_the_encoder_of_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    segmentation = PastaForSegmentation(tiny_config())
    segmentation.save_pretrained(tmp_path)
    for head in (PastaForClassification, PastaForSurvival, PastaForReportGeneration, PastaModel):
        loaded = head.from_pretrained(tmp_path)
        encoder = loaded.encoder if head is PastaModel else loaded.pasta.encoder
        for (name, expected), (_, actual) in zip(
            segmentation.pasta.encoder.state_dict().items(), encoder.state_dict().items()
        ):
            torch.testing.assert_close(actual, expected, msg=f"{head.__name__}: {name}")


def test_two_channel_pet_ct_input():
    config = tiny_config(in_channels=2)
    pixel_values = _inputs(config)
    assert pixel_values.shape[1] == 2
    segmentation = PastaForSegmentation(config)
    assert segmentation(pixel_values).logits.shape == (BATCH, config.num_labels, SIZE, SIZE, SIZE)
    mim = PastaForMaskedImageModeling(config)
    output = mim(pixel_values)
    assert output.reconstruction.shape == pixel_values.shape and torch.isfinite(output.loss)
    with pytest.raises(ValueError, match=r"expects 2 input channel\(s\) \(CT \+ PET\), got 1"):
        segmentation(pixel_values[:, :1])


def test_input_errors_name_the_problem():
    model = PastaModel(tiny_config())
    with pytest.raises(ValueError, match="5D tensor"):
        model(torch.zeros(1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\) \(CT\), got 2"):
        model(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.zeros(1, 1, 16, 18, 16))


def test_classification_loss_skips_absent_tasks_and_lesion_mask_only_moves_lesion_tasks():
    torch.manual_seed(0)
    config = tiny_config()
    model = PastaForClassification(config).eval()
    pixel_values = _inputs(config)
    labels = {
        "detection": torch.tensor([1, 0]),
        "lesion_type": torch.tensor([-100, 3]),
        "shape": torch.tensor([-100, -100]),
    }
    output = model(pixel_values, labels=labels)
    assert set(output.task_losses) == {"detection", "lesion_type"}
    expected = (
        F.cross_entropy(output.logits["detection"], labels["detection"])
        + F.cross_entropy(output.logits["lesion_type"][1:], labels["lesion_type"][1:])
    ) / 2
    torch.testing.assert_close(output.loss, expected)

    mask = torch.zeros(BATCH, 1, SIZE, SIZE, SIZE)
    mask[:, :, 2:6, 2:6, 2:6] = 1
    masked = model(pixel_values, lesion_mask=mask)
    for task in config.scan_level_tasks:
        torch.testing.assert_close(masked.logits[task], output.logits[task])
    assert not torch.allclose(masked.logits["lesion_type"], output.logits["lesion_type"])
    with pytest.raises(ValueError, match="unknown task"):
        model(pixel_values, labels={"t_stage": torch.tensor([0, 1])})


def test_staging_is_a_configurable_task():
    config = tiny_config(classification_tasks={"t_stage": ["T1", "T2", "T3", "T4"]}, scan_level_tasks=[])
    output = PastaForClassification(config)(_inputs(config), labels={"t_stage": torch.tensor([0, 3])})
    assert output.logits["t_stage"].shape == (BATCH, 4) and torch.isfinite(output.loss)


def _cox_reference(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Breslow negative partial log-likelihood, written out with loops."""
    total = 0.0
    for i in range(len(risk)):
        if event[i]:
            at_risk = [j for j in range(len(risk)) if time[j] >= time[i]]
            total -= risk[i] - math.log(sum(math.exp(risk[j]) for j in at_risk))
    return total / event.sum()


def test_cox_partial_likelihood_matches_reference_with_ties():
    risk = np.array([0.3, -1.2, 0.8, 0.1, 2.0, -0.4])
    time = np.array([5.0, 3.0, 3.0, 8.0, 1.0, 3.0])
    event = np.array([1, 1, 0, 1, 1, 1])
    loss = cox_partial_likelihood_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert loss.item() == pytest.approx(_cox_reference(risk, time, event), rel=1e-6)
    censored = cox_partial_likelihood_loss(torch.tensor(risk, requires_grad=True), torch.tensor(time), torch.zeros(6))
    assert censored.item() == 0.0 and censored.requires_grad


def test_survival_head_ranks_and_trains():
    torch.manual_seed(0)
    config = tiny_config()
    model = PastaForSurvival(config)
    pixel_values = _inputs(config, batch=4)
    labels = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss = model(pixel_values, labels=labels).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first
    with pytest.raises(ValueError, match=r"\(batch, 2\) = \(time, event\)"):
        model(pixel_values, labels=torch.ones(4))


def test_block_mask_fraction_blocks_and_independent_channels():
    shape = (3, 2, 16, 16, 16)
    mask = random_block_mask(shape, (4, 4, 4), 0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == shape and mask.dtype == torch.bool
    assert torch.all(mask.float().mean(dim=(2, 3, 4)) == 0.5)  # exactly half of the 64 blocks, per sample and channel
    blocks = mask.view(3, 2, 4, 4, 4, 4, 4, 4)
    assert torch.all(blocks.amin(dim=(3, 5, 7)) == blocks.amax(dim=(3, 5, 7)))  # constant inside every block
    assert not torch.equal(mask[:, 0], mask[:, 1])  # PET and CT masked independently
    uneven = random_block_mask((1, 1, 18, 16, 16), (4, 4, 4), 0.5)
    assert uneven.shape == (1, 1, 18, 16, 16)


def test_masked_image_modeling_zeroes_masked_blocks_and_weights_the_loss():
    torch.manual_seed(0)
    config = tiny_config(in_channels=2)
    model = PastaForMaskedImageModeling(config)
    pixel_values = _inputs(config)
    seen = {}
    model.pasta.encoder.register_forward_pre_hook(lambda module, args: seen.update(x=args[0].clone()))
    output = model(pixel_values)
    mask = output.bool_masked_pos
    assert torch.all(mask.float().mean(dim=(2, 3, 4)) == config.mim_mask_ratio)
    assert torch.all(seen["x"][mask] == 0)
    torch.testing.assert_close(seen["x"][~mask], pixel_values[~mask])
    error = (output.reconstruction - pixel_values) ** 2
    expected = error[mask].mean() + config.mim_visible_loss_weight * error[~mask].mean()
    torch.testing.assert_close(output.loss, expected)


def test_report_generation_generate_matches_greedy_decoding(report_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(text_config={"vocab_size": len(report_tokenizer)})
    model = PastaForReportGeneration(config).eval()
    pixel_values = _inputs(config)
    generated = model.generate(pixel_values=pixel_values, max_new_tokens=12, do_sample=False)
    assert generated.shape[0] == BATCH and torch.all(generated[:, 0] == config.text_config.decoder_start_token_id)
    no_cache = model.generate(pixel_values=pixel_values, max_new_tokens=12, do_sample=False, use_cache=False)
    torch.testing.assert_close(generated, no_cache)
    # the same greedy decoding, one full forward per token
    tokens = torch.full((BATCH, 1), config.text_config.decoder_start_token_id)
    with torch.no_grad():
        encoded = model.encode_image(pixel_values)
        for _ in range(generated.shape[1] - 1):
            logits = model(encoder_outputs=encoded, decoder_input_ids=tokens, use_cache=False).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = config.text_config.eos_token_id
    for row, reference in zip(generated, tokens):
        end = int((reference == eos).nonzero()[0]) + 1 if (reference == eos).any() else len(reference)
        torch.testing.assert_close(row[:end], reference[:end])
    texts = report_tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert all(isinstance(t, str) for t in texts)


def test_report_padding_mask_leaves_real_tokens_unchanged(report_tokenizer, report_texts):
    torch.manual_seed(0)
    config = tiny_config(text_config={"vocab_size": len(report_tokenizer)})
    model = PastaForReportGeneration(config).eval()
    batch = report_tokenizer(report_texts[:2], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    pixel_values = _inputs(config)
    with torch.no_grad():
        plain = model(pixel_values, labels=labels)
        masked = model(pixel_values, labels=labels, decoder_attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(masked.logits[real], plain.logits[real])
    torch.testing.assert_close(masked.loss, plain.loss)
    # each report scored alone gives the same loss terms as in the padded batch
    with torch.no_grad():
        alone = model(pixel_values[1:], labels=labels[1:, : int(real[1].sum())]).logits
    torch.testing.assert_close(alone[0], plain.logits[1, : int(real[1].sum())], rtol=1e-4, atol=1e-5)


def test_report_generation_learns_a_report(report_tokenizer, report_texts):
    torch.manual_seed(0)
    config = tiny_config(text_config={"vocab_size": len(report_tokenizer)})
    model = PastaForReportGeneration(config)
    text = report_texts[1]
    labels = torch.tensor([report_tokenizer(text)["input_ids"]])
    assert labels[0, -1] == report_tokenizer.eos_token_id
    pixel_values = _inputs(config, batch=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    generated = model.generate(pixel_values=pixel_values, do_sample=False, max_new_tokens=labels.shape[1] + 2)
    assert report_tokenizer.decode(generated[0], skip_special_tokens=True) == text


@pytest.mark.parametrize("model_class", [PastaForSegmentation, PastaForReportGeneration], ids=lambda c: c.__name__)
def test_gradient_checkpointing_gives_the_same_gradients(model_class):
    config = tiny_config()
    pixel_values = _inputs(config)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = model_class(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(stage.gradient_checkpointing for stage in model.pasta.encoder.stages)
        loss = model(pixel_values, labels=_labels_for(model, config, pixel_values)).loss
        loss.backward()
        grads.append(model.pasta.encoder.stages[0].blocks[0].conv.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "model_class", [PastaForSegmentation, PastaForClassification, PastaForReportGeneration], ids=lambda c: c.__name__
)
def test_autocast_forward_and_backward(model_class, dtype):
    torch.manual_seed(0)
    config = tiny_config()
    model = model_class(config)
    pixel_values = _inputs(config)
    labels = _labels_for(model, config, pixel_values)
    with torch.autocast("cpu", dtype=dtype):
        output = model(pixel_values, labels=labels)
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
