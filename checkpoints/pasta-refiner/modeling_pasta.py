"""PASTA models: an nnU-Net style 3D encoder, its U-Net decoder, and one head per task.

Inputs are ``pixel_values`` of shape ``(batch, channels, x, y, z)`` in RAS+ voxel order, already
resampled and normalised by :class:`~modeling_pasta.image_processing_pasta.PastaImageProcessor`
(channel 0 CT, channel 1 PET when ``config.in_channels == 2``). Spatial sizes must be divisible by
``2 ** (num_stages - 1)``; the processor's sliding window takes care of that for whole scans.

Heads share the encoder under the ``pasta`` prefix, so any head loads the encoder of another
head's checkpoint (``PastaForClassification.from_pretrained(segmentation_checkpoint)``).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils import ModelOutput, logging

from .configuration_pasta import PastaConfig, PastaTextConfig

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
#: Fine-tuning modes of :meth:`PastaPreTrainedModel.set_finetune_mode`.
FINETUNE_MODES = ("frozen", "partial", "full")


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass
class PastaModelOutput(ModelOutput):
    """Output of :class:`PastaModel`.

    Args:
        last_hidden_state: deepest encoder features ``(batch, hidden_sizes[-1], x', y', z')``.
        pooler_output: the pooled embedding ``(batch, sum(hidden_sizes))``: every encoder stage
            averaged over space (or over ``pooling_mask``) and concatenated.
        decoder_last_hidden_state: full-resolution U-Net decoder features
            ``(batch, hidden_sizes[0], x, y, z)``; None without a decoder.
        hidden_states: the output of every encoder stage, full resolution first.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    decoder_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PastaSegmentationOutput(ModelOutput):
    """Output of :class:`PastaForSegmentation`.

    Args:
        loss: cross-entropy + ``config.dice_loss_weight`` x soft Dice, when ``labels`` are given.
        logits: class scores ``(batch, num_labels, x, y, z)``.
        hidden_states: encoder stage outputs, when asked for.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PastaClassificationOutput(ModelOutput):
    """Output of :class:`PastaForClassification`.

    Args:
        loss: mean cross-entropy over the tasks that have at least one label, when ``labels`` are given.
        logits: task name -> class scores ``(batch, num_classes)``.
        task_losses: task name -> that task's cross-entropy (tasks without labels are absent).
        pooler_output: the scan embedding ``(batch, sum(hidden_sizes))``.
    """

    loss: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    task_losses: dict[str, torch.FloatTensor] | None = None
    pooler_output: torch.FloatTensor | None = None


@dataclass
class PastaSurvivalOutput(ModelOutput):
    """Output of :class:`PastaForSurvival`.

    Args:
        loss: negative Cox partial log-likelihood (Breslow ties), when ``labels`` are given.
        risk_scores: log relative hazard per scan ``(batch,)``; higher = shorter expected survival.
        pooler_output: the features the head saw.
    """

    loss: torch.FloatTensor | None = None
    risk_scores: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


@dataclass
class PastaMaskedImageModelingOutput(ModelOutput):
    """Output of :class:`PastaForMaskedImageModeling`.

    Args:
        loss: MSE on masked voxels + ``config.mim_visible_loss_weight`` x MSE on visible voxels.
        reconstruction: the reconstructed input ``(batch, channels, x, y, z)``.
        bool_masked_pos: the mask used, True where the input was set to 0 (same shape as the input).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None


@dataclass
class PastaLesionSynthesisOutput(ModelOutput):
    """Output of :class:`PastaForLesionSynthesis`.

    Args:
        residual_hu: the change made to each voxel (HU) ``(batch, 1, x, y, z)``: zero wherever the
            blending weight is zero, at most ``config.synthesis_residual_bound_hu`` in magnitude.
        refined_hu: ``ct_hu + residual_hu`` (HU).
    """

    residual_hu: torch.FloatTensor | None = None
    refined_hu: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------
# Functional helpers
# --------------------------------------------------------------------------------------------


def piecewise_linear_hu(hu: torch.Tensor, breakpoints, targets) -> torch.Tensor:
    """Map HU through the piecewise-linear curve ``breakpoints -> targets`` (clipped outside).

    The torch twin of the processor's ``"pasta_hu"`` scheme (``np.interp``), differentiable in
    ``hu`` between the outer breakpoints, so a loss on normalised values reaches HU edits.
    """
    xs = [float(v) for v in breakpoints]
    ys = [float(v) for v in targets]
    out = torch.full_like(hu, ys[0])
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):
        out = out + (hu.clamp(x0, x1) - x0) * ((y1 - y0) / (x1 - x0))
    return out


def masked_average_pool(features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Average ``features (B, C, x, y, z)`` over space, weighted by ``mask`` resized to their grid.

    ``mask`` is ``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` at any resolution (e.g. the input's); a
    sample whose mask is empty falls back to the plain spatial average.
    """
    if mask is None:
        return features.mean(dim=(2, 3, 4))
    if mask.ndim == 4:
        mask = mask[:, None]
    weights = F.adaptive_avg_pool3d(mask.to(features.dtype), features.shape[2:])
    total = weights.sum(dim=(2, 3, 4))
    pooled = (features * weights).sum(dim=(2, 3, 4)) / total.clamp_min(1e-6)
    return torch.where(total > 0, pooled, features.mean(dim=(2, 3, 4)))


def random_block_mask(
    shape: tuple[int, ...],
    block_size: tuple[int, int, int],
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """A block mask for masked image modelling, drawn independently per sample and per channel.

    The volume ``shape = (B, C, X, Y, Z)`` is tiled by blocks of ``block_size`` voxels (the last
    block of an axis may be cut); exactly ``round(mask_ratio * number_of_blocks)`` blocks are
    masked in every (sample, channel). Returns a bool tensor of ``shape``, True = masked.
    """
    batch, channels, *spatial = shape
    grid = [math.ceil(s / b) for s, b in zip(spatial, block_size)]
    num_blocks = math.prod(grid)
    num_masked = int(round(mask_ratio * num_blocks))
    noise = torch.rand(batch, channels, num_blocks, device=device, generator=generator)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)
    blocks = (ranks < num_masked).view(batch, channels, *grid)
    for axis, size in enumerate(block_size):
        blocks = blocks.repeat_interleave(size, dim=2 + axis)
    return blocks[:, :, : spatial[0], : spatial[1], : spatial[2]].contiguous()


def cox_partial_likelihood_loss(risk_scores: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood, Breslow's handling of tied times, averaged over events.

    Args:
        risk_scores: log relative hazards ``(B,)``.
        times: follow-up times ``(B,)`` (any unit).
        events: 1 = event observed, 0 = censored ``(B,)``.

    A batch without any event carries no information: the loss is 0 (still attached to the graph).
    """
    risk_scores = risk_scores.float()
    events = events.float()
    at_risk = times[None, :] >= times[:, None]  # row i: the risk set of subject i
    log_risk_set = torch.logsumexp(risk_scores[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    num_events = events.sum()
    if num_events == 0:
        return risk_scores.sum() * 0.0
    return -((risk_scores - log_risk_set) * events).sum() / num_events


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: prepend the start token, drop the last token, -100 -> pad."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


def soft_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes present in the batch, computed over the whole batch.

    Dice is pooled over the batch as in nnU-Net's batch Dice. Classes absent from every patch are left
    out of the mean: their Dice is ~0 whatever the prediction (no true positives to find), so with many
    organ classes they would flatten the loss and dilute the gradient of the small lesion class; the
    cross-entropy term still pushes their probabilities down. A batch with no foreground at all gives 0.
    """
    probs = logits.float().softmax(dim=1)[:, 1:]
    one_hot = F.one_hot(labels.clamp_min(0), logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    valid = valid[:, None].to(probs.dtype)
    dims = (0, 2, 3, 4)
    tp = (probs * one_hot * valid).sum(dims)
    fp = (probs * (1 - one_hot) * valid).sum(dims)
    fn = ((1 - probs) * one_hot * valid).sum(dims)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    present = (one_hot * valid).sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1 - dice[present].mean()


# --------------------------------------------------------------------------------------------
# Convolutional encoder and decoder
# --------------------------------------------------------------------------------------------


class PastaConvBlock(nn.Module):
    """3x3x3 convolution -> instance norm -> leaky ReLU (the activation can be left out).

    The convolution has no bias: the instance norm right after it removes any per-channel constant.
    """

    def __init__(
        self, config: PastaConfig, in_channels: int, out_channels: int, stride: int = 1, activation: bool = True
    ):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = nn.InstanceNorm3d(out_channels, eps=config.norm_eps, affine=True)
        self.act = nn.LeakyReLU(config.negative_slope, inplace=True) if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(hidden_states)))


class PastaResidualBlock(nn.Module):
    """nnU-Net's residual basic block: two conv blocks plus a skip (average pool + 1x1 conv when needed)."""

    def __init__(self, config: PastaConfig, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = PastaConvBlock(config, in_channels, out_channels, stride)
        self.conv2 = PastaConvBlock(config, out_channels, out_channels, activation=False)
        skip: list[nn.Module] = []
        if stride != 1:
            skip.append(nn.AvgPool3d(stride, stride))
        if in_channels != out_channels:
            skip.append(nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False))
            skip.append(nn.InstanceNorm3d(out_channels, eps=config.norm_eps, affine=True))
        self.skip = nn.Sequential(*skip)
        self.act = nn.LeakyReLU(config.negative_slope, inplace=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(hidden_states)) + self.skip(hidden_states))


class PastaEncoderStage(GradientCheckpointingLayer):
    """One encoder stage: ``depths[i]`` blocks, the first one strided by 2 (except in stage 0)."""

    def __init__(self, config: PastaConfig, stage_index: int):
        super().__init__()
        residual = config.encoder_type == "residual"
        out_channels = config.hidden_sizes[stage_index]
        if stage_index > 0:
            in_channels = config.hidden_sizes[stage_index - 1]
        else:
            in_channels = out_channels if residual else config.in_channels
        stride = 1 if stage_index == 0 else 2
        block = PastaResidualBlock if residual else PastaConvBlock
        blocks = [block(config, in_channels, out_channels, stride)]
        blocks += [block(config, out_channels, out_channels) for _ in range(config.depths[stage_index] - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.blocks(hidden_states)


class PastaEncoder(nn.Module):
    """The 3D encoder: an optional stem (residual variant) and ``len(hidden_sizes)`` stages."""

    def __init__(self, config: PastaConfig):
        super().__init__()
        self.stem = (
            PastaConvBlock(config, config.in_channels, config.hidden_sizes[0])
            if config.encoder_type == "residual"
            else nn.Identity()
        )
        self.stages = nn.ModuleList(PastaEncoderStage(config, i) for i in range(config.num_stages))

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        hidden_states = self.stem(pixel_values)
        outputs = []
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            outputs.append(hidden_states)
        return outputs


class PastaDecoderStage(GradientCheckpointingLayer):
    """Transposed-conv upsampling, concatenation with the skip features, ``decoder_depths[i]`` conv blocks."""

    def __init__(self, config: PastaConfig, in_channels: int, skip_channels: int, depth: int):
        super().__init__()
        # no bias: the next convolution is instance-normalised, a per-channel constant would cancel
        self.upsample = nn.ConvTranspose3d(in_channels, skip_channels, kernel_size=2, stride=2, bias=False)
        blocks = [PastaConvBlock(config, 2 * skip_channels, skip_channels)]
        blocks += [PastaConvBlock(config, skip_channels, skip_channels) for _ in range(depth - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, hidden_states: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat([self.upsample(hidden_states), skip], dim=1))


class PastaDecoder(nn.Module):
    """The U-Net decoder, from the deepest encoder stage back to full resolution."""

    def __init__(self, config: PastaConfig):
        super().__init__()
        sizes = config.hidden_sizes
        self.stages = nn.ModuleList(
            PastaDecoderStage(config, sizes[i + 1], sizes[i], config.decoder_depths[len(sizes) - 2 - i])
            for i in reversed(range(len(sizes) - 1))
        )

    def forward(self, encoder_hidden_states: list[torch.Tensor]) -> torch.Tensor:
        hidden_states = encoder_hidden_states[-1]
        for stage, skip in zip(self.stages, reversed(encoder_hidden_states[:-1])):
            hidden_states = stage(hidden_states, skip)
        return hidden_states


# --------------------------------------------------------------------------------------------
# Pretrained model base and the base model
# --------------------------------------------------------------------------------------------


class PastaPreTrainedModel(PreTrainedModel):
    """Weight initialisation, checkpoint format and remote-code registration shared by every PASTA model."""

    config_class = PastaConfig
    config: PastaConfig
    base_model_prefix = "pasta"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["PastaEncoderStage", "PastaDecoderStage", "PastaTextDecoderLayer"]
    _supports_sdpa = True
    # The heads average their own losses: Trainer must not read ``**kwargs`` of forward as loss kwargs.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """He initialisation for convolutions (nnU-Net), normal(0, initializer_range) for linear layers."""
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            init.kaiming_normal_(module.weight, a=self.config.negative_slope)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.InstanceNorm3d, nn.LayerNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def set_finetune_mode(self, mode: str) -> dict[str, int]:
        """Choose what trains when fine-tuning: ``"frozen"`` freezes the whole encoder (stem and every
        stage; heads and decoders train), ``"partial"`` the stem and the first half of the stages
        (rounded down), ``"full"`` nothing.

        Returns:
            ``{"trainable": n, "frozen": n}`` parameter counts.
        """
        if mode not in FINETUNE_MODES:
            raise ValueError(f"unknown fine-tuning mode {mode!r}; choose one of {list(FINETUNE_MODES)}")
        encoder = self.base_model.encoder
        self.requires_grad_(True)
        frozen = {"frozen": [encoder], "partial": [encoder.stem, *encoder.stages[: len(encoder.stages) // 2]]}
        for module in frozen.get(mode, []):
            module.requires_grad_(False)
        return {
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in self.parameters() if not p.requires_grad),
        }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights (safetensors), config, and this code beside them for ``trust_remote_code`` loading.

        The saved ``auto_map`` lists every PASTA auto class, so ``AutoModel``,
        ``AutoModelForImageSegmentation``, ... all load the checkpoint in a process that never
        imported this package.
        """
        module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update({cls._auto_class: f"{module}.{cls.__name__}" for cls in PASTA_AUTO_CLASSES})
        self.config.auto_map = auto_map
        if not self.is_remote_code():  # heads without an auto class (survival) still ship their code
            os.makedirs(save_directory, exist_ok=True)
            custom_object_save(self, save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)


class PastaModel(PastaPreTrainedModel):
    """The PASTA backbone: encoder features, optional U-Net decoder features and a pooled embedding.

    Args:
        config: the model configuration.
        add_decoder: build the U-Net decoder (segmentation, masked image modelling). Heads that
            only need the encoder (classification, survival, reports) leave it out.
    """

    def __init__(self, config: PastaConfig, add_decoder: bool = True):
        super().__init__(config)
        self.encoder = PastaEncoder(config)
        self.decoder = PastaDecoder(config) if add_decoder else None
        self.post_init()

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raise a ValueError naming the problem when ``pixel_values`` cannot go through the network."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 5:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(
                f"pixel_values must be a 5D tensor (batch, channels, x, y, z), got {shape}; "
                "use PastaImageProcessor to turn a CT file or array into model inputs"
            )
        channels = pixel_values.shape[1]
        if channels != self.config.in_channels:
            raise ValueError(
                f"this model expects {self.config.in_channels} input channel(s) "
                f"({'CT' if self.config.in_channels == 1 else 'CT + PET'}), got {channels}"
            )
        factor = 2 ** (self.config.num_stages - 1)
        spatial = tuple(pixel_values.shape[2:])
        if any(s % factor for s in spatial):
            raise ValueError(
                f"spatial size {spatial} must be divisible by {factor} for a {self.config.num_stages}-stage "
                "encoder; pad the volume or run PastaImageProcessor.predict_segmentation (sliding window)"
            )

    def encode_and_decode(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Encoder stage outputs (full resolution first) and decoder features; no pooling (dense heads)."""
        self.check_pixel_values(pixel_values)
        stage_outputs = self.encoder(pixel_values)
        return stage_outputs, self.decoder(stage_outputs) if self.decoder is not None else None

    def forward(
        self,
        pixel_values: torch.Tensor,
        pooling_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PastaModelOutput | tuple:
        """Encode ``pixel_values (B, C, x, y, z)``; ``pooling_mask`` restricts the pooled embedding to a region."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        stage_outputs, decoded = self.encode_and_decode(pixel_values)
        pooled = torch.cat([masked_average_pool(features, pooling_mask) for features in stage_outputs], dim=1)
        output = PastaModelOutput(
            last_hidden_state=stage_outputs[-1],
            pooler_output=pooled,
            decoder_last_hidden_state=decoded,
            hidden_states=tuple(stage_outputs) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------


class PastaForSegmentation(PastaPreTrainedModel):
    """Organ + lesion segmentation: the U-Net decoder and a 1x1x1 convolution to ``config.num_labels`` classes."""

    def __init__(self, config: PastaConfig):
        super().__init__(config)
        self.pasta = PastaModel(config, add_decoder=True)
        self.segmentation_head = nn.Conv3d(config.hidden_sizes[0], config.num_labels, kernel_size=1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PastaSegmentationOutput | tuple:
        """Segment ``pixel_values``; ``labels (B, x, y, z)`` hold class ids (``-100`` = ignore)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        stage_outputs, decoded = self.pasta.encode_and_decode(pixel_values)
        logits = self.segmentation_head(decoded)
        loss = None
        if labels is not None:
            if labels.ndim == 5:
                labels = labels[:, 0]
            if labels.shape != logits.shape[:1] + logits.shape[2:]:
                raise ValueError(
                    f"labels must have shape {tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(labels.shape)}"
                )
            labels = labels.long()
            valid = labels != IGNORE_INDEX
            loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            if self.config.dice_loss_weight:
                loss = loss + self.config.dice_loss_weight * soft_dice_loss(logits, labels, valid)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        output = PastaSegmentationOutput(
            loss=loss, logits=logits, hidden_states=tuple(stage_outputs) if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()


class PastaTaskHead(nn.Module):
    """Dropout, an optional hidden layer, and a linear layer to one task's classes."""

    def __init__(self, in_features: int, num_classes: int, hidden_size: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_size:
            layers += [nn.Linear(in_features, hidden_size), nn.GELU(), nn.Dropout(dropout)]
            in_features = hidden_size
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _scan_and_lesion_features(
    outputs: PastaModelOutput, lesion_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scan embedding, lesion embedding = [lesion-pooled, scan] features) from the encoder stages."""
    scan = outputs.pooler_output
    lesion = (
        torch.cat([masked_average_pool(f, lesion_mask) for f in outputs.hidden_states], dim=1)
        if lesion_mask is not None
        else scan
    )
    return scan, torch.cat([lesion, scan], dim=1)


class PastaForClassification(PastaPreTrainedModel):
    """Multi-task classification: detection, phase, lesion type, malignancy, report attributes, staging.

    Scan-level tasks (``config.scan_level_tasks``) see the scan embedding; the other tasks see
    features pooled inside ``lesion_mask`` concatenated with the scan embedding (without a mask,
    the scan embedding twice).
    """

    def __init__(self, config: PastaConfig):
        super().__init__(config)
        self.pasta = PastaModel(config, add_decoder=False)
        width = sum(config.hidden_sizes)
        self.heads = nn.ModuleDict(
            {
                task: PastaTaskHead(
                    width if task in config.scan_level_tasks else 2 * width,
                    len(classes),
                    config.classifier_hidden_size,
                    config.classifier_dropout,
                )
                for task, classes in config.classification_tasks.items()
            }
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        lesion_mask: torch.Tensor | None = None,
        labels: dict[str, torch.LongTensor] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PastaClassificationOutput | tuple:
        """Classify; ``labels`` maps task names to class ids ``(B,)`` (``-100`` or a missing task = no label)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.pasta(pixel_values, output_hidden_states=True, return_dict=True)
        scan_features, lesion_features = _scan_and_lesion_features(outputs, lesion_mask)
        logits = {
            task: head(scan_features if task in self.config.scan_level_tasks else lesion_features)
            for task, head in self.heads.items()
        }
        loss, task_losses = None, None
        if labels is not None:
            unknown = sorted(set(labels) - set(logits))
            if unknown:
                raise ValueError(f"labels for unknown task(s) {unknown}; this model has {sorted(logits)}")
            task_losses = {}
            for task, target in labels.items():
                target = torch.as_tensor(target, device=logits[task].device).long().view(-1)
                if (target != IGNORE_INDEX).any():
                    task_losses[task] = F.cross_entropy(logits[task].float(), target, ignore_index=IGNORE_INDEX)
            loss = (
                torch.stack(list(task_losses.values())).mean()
                if task_losses
                else sum(task_logits.sum() for task_logits in logits.values()) * 0.0
            )
        output = PastaClassificationOutput(
            loss=loss, logits=logits, task_losses=task_losses, pooler_output=scan_features
        )
        return output if return_dict else output.to_tuple()


class PastaForSurvival(PastaPreTrainedModel):
    """Survival prediction: a risk score per scan trained with the Cox partial likelihood.

    The head sees the same features as the lesion-level classification tasks (tumour-pooled when
    ``lesion_mask`` is given, plus the scan embedding).
    """

    def __init__(self, config: PastaConfig):
        super().__init__(config)
        self.pasta = PastaModel(config, add_decoder=False)
        self.risk_head = PastaTaskHead(
            2 * sum(config.hidden_sizes), 1, config.classifier_hidden_size, config.classifier_dropout
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        lesion_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PastaSurvivalOutput | tuple:
        """Predict risk scores; ``labels (B, 2)`` = (follow-up time, event 1 / censored 0)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.pasta(pixel_values, output_hidden_states=True, return_dict=True)
        _, features = _scan_and_lesion_features(outputs, lesion_mask)
        risk = self.risk_head(features)[:, 0]
        loss = None
        if labels is not None:
            labels = torch.as_tensor(labels, device=risk.device)
            if labels.ndim != 2 or labels.shape[1] != 2:
                raise ValueError(f"survival labels must be (batch, 2) = (time, event), got shape {tuple(labels.shape)}")
            loss = cox_partial_likelihood_loss(risk, labels[:, 0], labels[:, 1])
        output = PastaSurvivalOutput(loss=loss, risk_scores=risk, pooler_output=features)
        return output if return_dict else output.to_tuple()


class PastaForMaskedImageModeling(PastaPreTrainedModel):
    """Masked image modelling with zero-mean imputation (the PET/CT foundation model's pretext task).

    Inputs are z-scored, so masked blocks set to 0 carry the mean and no learnable mask token is
    needed; PET and CT channels are masked independently. The U-Net decoder reconstructs every
    channel; the loss weights masked voxels 1 and visible voxels ``config.mim_visible_loss_weight``.
    """

    def __init__(self, config: PastaConfig):
        super().__init__(config)
        self.pasta = PastaModel(config, add_decoder=True)
        self.reconstruction_head = nn.Conv3d(config.hidden_sizes[0], config.in_channels, kernel_size=1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PastaMaskedImageModelingOutput | tuple:
        """Mask, reconstruct and score; ``bool_masked_pos`` (True = masked) is drawn when not given."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if bool_masked_pos is None:
            bool_masked_pos = random_block_mask(
                tuple(pixel_values.shape),
                tuple(self.config.mim_block_size),
                self.config.mim_mask_ratio,
                device=pixel_values.device,
            )
        bool_masked_pos = bool_masked_pos.bool().expand_as(pixel_values)
        _, decoded = self.pasta.encode_and_decode(pixel_values.masked_fill(bool_masked_pos, 0.0))
        reconstruction = self.reconstruction_head(decoded)
        squared_error = (reconstruction.float() - pixel_values.float()) ** 2
        masked = bool_masked_pos.float()
        masked_mse = (squared_error * masked).sum() / masked.sum().clamp_min(1.0)
        visible_mse = (squared_error * (1 - masked)).sum() / (1 - masked).sum().clamp_min(1.0)
        loss = masked_mse + self.config.mim_visible_loss_weight * visible_mse
        output = PastaMaskedImageModelingOutput(
            loss=loss, reconstruction=reconstruction, bool_masked_pos=bool_masked_pos
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------
# Report generation: 3D encoder tokens -> autoregressive text decoder with cross-attention
# --------------------------------------------------------------------------------------------


class PastaVisualProjection(nn.Module):
    """Deepest encoder features ``(B, C, x, y, z)`` -> tokens ``(B, x*y*z, H)`` with position embeddings.

    Each token's position is its normalised grid coordinate in [-1, 1]^3, encoded with sines and
    cosines at ``num_frequencies`` octaves and projected, so any grid size (any volume) works.
    """

    num_frequencies = 8

    def __init__(self, in_channels: int, text_config: PastaTextConfig):
        super().__init__()
        self.proj = nn.Linear(in_channels, text_config.hidden_size)
        self.position_proj = nn.Linear(6 * self.num_frequencies, text_config.hidden_size)
        self.norm = nn.LayerNorm(text_config.hidden_size, eps=text_config.layer_norm_eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features.flatten(2).transpose(1, 2)
        axes = [torch.linspace(-1.0, 1.0, n, device=features.device) for n in features.shape[2:]]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        freqs = math.pi * 2.0 ** torch.arange(self.num_frequencies, device=features.device)
        angles = (coords[:, :, None] * freqs).flatten(1)
        position = torch.cat([angles.sin(), angles.cos()], dim=-1).to(tokens.dtype)
        return self.norm(self.proj(tokens) + self.position_proj(position))


class PastaTextAttention(nn.Module):
    """Multi-head attention (self or cross) on ``scaled_dot_product_attention``, with a key/value cache."""

    def __init__(self, config: PastaTextConfig, layer_idx: int, is_cross_attention: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        query = self._heads(self.q_proj(hidden_states))
        if self.is_cross_attention:
            cache = past_key_values.cross_attention_cache if isinstance(past_key_values, EncoderDecoderCache) else None
            if cache is not None and past_key_values.is_updated.get(self.layer_idx):
                key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
            else:
                key = self._heads(self.k_proj(key_value_states))
                value = self._heads(self.v_proj(key_value_states))
                if cache is not None:
                    key, value = cache.update(key, value, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
            is_causal = False
        else:
            key = self._heads(self.k_proj(hidden_states))
            value = self._heads(self.v_proj(hidden_states))
            if past_key_values is not None:
                cache = (
                    past_key_values.self_attention_cache
                    if isinstance(past_key_values, EncoderDecoderCache)
                    else past_key_values
                )
                key, value = cache.update(key, value, self.layer_idx)
            # Without an explicit mask, a query block of the same length as the keys is causal;
            # a single new token (cached generation) attends to everything before it.
            is_causal = attention_mask is None and query.shape[2] > 1
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        batch, _, length, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, -1))


class PastaTextDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer: causal self-attention, cross-attention to image tokens, feed-forward."""

    def __init__(self, config: PastaTextConfig, layer_idx: int):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PastaTextAttention(config, layer_idx, is_cross_attention=False)
        self.cross_attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = PastaTextAttention(config, layer_idx, is_cross_attention=True)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.dropout(
            self.self_attn(
                self.self_attn_norm(hidden_states), attention_mask=attention_mask, past_key_values=past_key_values
            )
        )
        hidden_states = hidden_states + self.dropout(
            self.cross_attn(
                self.cross_attn_norm(hidden_states),
                key_value_states=encoder_hidden_states,
                past_key_values=past_key_values,
            )
        )
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


class PastaTextDecoder(nn.Module):
    """Token + learned position embeddings, decoder layers, final layer norm."""

    def __init__(self, config: PastaTextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(PastaTextDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    @staticmethod
    def _attention_mask(
        padding_mask: torch.Tensor | None, query_length: int, past_length: int, device: torch.device
    ) -> torch.Tensor | None:
        """Boolean (B, 1, Q, K) mask (True = attend), or None when ``is_causal`` alone is right."""
        if padding_mask is None and (query_length == 1 or past_length == 0):
            return None
        key_length = past_length + query_length
        positions = torch.arange(key_length, device=device)
        allowed = positions[None, :] <= (past_length + torch.arange(query_length, device=device))[:, None]
        if padding_mask is not None:
            allowed = allowed[None] & padding_mask[:, None, -key_length:].bool()
            # a query never attends to nothing (its own position stays visible)
            allowed |= (
                positions[None, None, :] == (past_length + torch.arange(query_length, device=device))[None, :, None]
            )
            return allowed[:, None]
        return allowed[None, None]

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        length = input_ids.shape[1]
        if past_length + length > self.config.max_position_embeddings:
            raise ValueError(
                f"report of {past_length + length} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}; lower max_length / max_new_tokens"
            )
        positions = torch.arange(past_length, past_length + length, device=input_ids.device)
        hidden_states = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(positions)[None])
        mask = self._attention_mask(attention_mask, length, past_length, input_ids.device)
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = layer(
                hidden_states, encoder_hidden_states, attention_mask=mask, past_key_values=past_key_values
            )
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return hidden_states, tuple(all_hidden) if all_hidden is not None else None


class PastaImageEncoderForGeneration:
    """What ``generate()`` calls once per scan: the 3D encoder and the visual projection.

    Not an ``nn.Module``: it only borrows the model's own submodules, so their weights are not
    registered twice.
    """

    main_input_name = "pixel_values"

    def __init__(self, model: "PastaForReportGeneration"):
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> BaseModelOutput:
        return self.model.encode_image(pixel_values)

    __call__ = forward


class PastaForReportGeneration(PastaPreTrainedModel, GenerationMixin):
    """Report writing: 3D encoder tokens -> autoregressive text decoder with cross-attention.

    ``generate(pixel_values=...)`` encodes the scan once and decodes with a key/value cache; decode
    the ids with the report tokenizer saved beside the model.
    """

    def __init__(self, config: PastaConfig):
        super().__init__(config)
        text_config = config.text_config
        self.pasta = PastaModel(config, add_decoder=False)
        self.visual_projection = PastaVisualProjection(config.hidden_sizes[-1], text_config)
        self.text_decoder = PastaTextDecoder(text_config)
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None:
            self.generation_config.max_length = text_config.max_position_embeddings

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_decoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_encoder(self, modality: str | None = None) -> PastaImageEncoderForGeneration:
        return PastaImageEncoderForGeneration(self)

    def encode_image(self, pixel_values: torch.Tensor) -> BaseModelOutput:
        """Image tokens ``(B, tokens, text hidden size)`` from the deepest encoder stage."""
        features = self.pasta(pixel_values, return_dict=True).last_hidden_state
        return BaseModelOutput(last_hidden_state=self.visual_projection(features))

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """Score a report; ``labels (B, T)`` are token ids ending with EOS, ``-100`` where padded.

        Without ``decoder_input_ids`` the labels are shifted right behind the start token.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        text_config = self.config.text_config
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (the scan) or precomputed encoder_outputs")
            encoder_outputs = self.encode_image(pixel_values)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels (the report token ids)")
            decoder_input_ids = shift_tokens_right(labels, text_config.pad_token_id, text_config.decoder_start_token_id)
        if use_cache is None:
            use_cache = text_config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(config=text_config), DynamicCache(config=text_config))
        if not use_cache:
            past_key_values = None
        hidden_states, all_hidden = self.text_decoder(
            decoder_input_ids,
            encoder_outputs.last_hidden_state,
            attention_mask=decoder_attention_mask,
            past_key_values=past_key_values,
            output_hidden_states=bool(output_hidden_states),
        )
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).long(), ignore_index=IGNORE_INDEX
            )
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=past_key_values,
            decoder_hidden_states=all_hidden,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------
# Auto-class registration: save_pretrained writes this code and an auto_map for all of them.
# --------------------------------------------------------------------------------------------

PastaModel.register_for_auto_class("AutoModel")
PastaForSegmentation.register_for_auto_class("AutoModelForImageSegmentation")
PastaForClassification.register_for_auto_class("AutoModelForImageClassification")
PastaForMaskedImageModeling.register_for_auto_class("AutoModelForMaskedImageModeling")
PastaForReportGeneration.register_for_auto_class("AutoModelForImageTextToText")
# --------------------------------------------------------------------------------------------
# Learned lesion synthesis (FreeTumor-style refiner)
# --------------------------------------------------------------------------------------------

#: Inputs of the refiner besides the CT: the host organ mask and the lesion's blending weight.
SYNTHESIS_CONDITION_CHANNELS = 2


class PastaForLesionSynthesis(PastaPreTrainedModel):
    """A lesion refiner: a 3D U-Net that learns the texture and contrast of a synthetic lesion.

    Input: a CT crop in HU holding a candidate lesion (drawn by PASTA-Gen's shape and intensity
    models), the host organ mask, the lesion's blending weight (1 in the core, a ramp across the
    boundary, 0 elsewhere; :func:`datasets_pasta.lesions.blend_weight`) and the lesion type.
    The CT goes through the ``"pasta_hu"`` curve of the config, the three maps are stacked as
    channels, and the type is a learned embedding added to the deepest encoder features.
    Output: ``residual_hu = bound * tanh(smooth(head)) * blend_weight`` — by construction zero
    outside the blended mask and within ``config.synthesis_residual_bound_hu`` — and the refined
    crop (``smooth`` is a fixed box filter, ``config.synthesis_residual_smoothing`` voxels wide).
    The head starts at zero, so an untrained refiner returns its input.

    It is trained against a segmentation discriminator (background / organ / lesion,
    :class:`PastaForSegmentation`) in ``training/train_refiner.py``; generation uses it through
    :class:`datasets_pasta.synthesis.LesionRefiner`.
    """

    main_input_name = "ct_hu"

    def __init__(self, config: PastaConfig):
        super().__init__(config)
        unet_config = copy.deepcopy(config)
        unet_config.in_channels = config.in_channels + SYNTHESIS_CONDITION_CHANNELS
        self.encoder = PastaEncoder(unet_config)
        self.decoder = PastaDecoder(unet_config)
        self.lesion_type_embeddings = nn.Embedding(len(self.lesion_types), config.hidden_sizes[-1])
        self.residual_head = nn.Conv3d(config.hidden_sizes[0], 1, kernel_size=1)
        self.post_init()

    @property
    def lesion_types(self) -> list[str]:
        """Type names in embedding order: the ``lesion_type`` classes (``"none"`` = no type given)."""
        return list(self.config.classification_tasks["lesion_type"])

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "residual_head", None):
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    def forward(
        self,
        ct_hu: torch.Tensor,
        host_mask: torch.Tensor,
        blend_weight: torch.Tensor,
        lesion_type_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PastaLesionSynthesisOutput | tuple:
        """Refine the lesions of ``ct_hu (B, 1, x, y, z)`` (HU).

        Args:
            ct_hu: CT crops in HU with the candidate lesions already drawn.
            host_mask: 1 on the host organ, 0 elsewhere (same shape).
            blend_weight: the lesions' blending weights in [0, 1] (same shape).
            lesion_type_ids: indices into :attr:`lesion_types` ``(B,)``; None = ``"none"``.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if ct_hu.ndim != 5 or ct_hu.shape[1] != self.config.in_channels:
            raise ValueError(
                f"ct_hu must be (batch, {self.config.in_channels}, x, y, z) in HU, got {tuple(ct_hu.shape)}"
            )
        for name, value in (("host_mask", host_mask), ("blend_weight", blend_weight)):
            if value.shape != ct_hu.shape:
                raise ValueError(f"{name} must have the shape of ct_hu {tuple(ct_hu.shape)}, got {tuple(value.shape)}")
        factor = 2 ** (self.config.num_stages - 1)
        if any(n % factor for n in ct_hu.shape[2:]):
            raise ValueError(f"crop size {tuple(ct_hu.shape[2:])} must be divisible by {factor}; pad the crop")
        if lesion_type_ids is None:
            lesion_type_ids = torch.zeros(ct_hu.shape[0], dtype=torch.long, device=ct_hu.device)
        weight = blend_weight.to(ct_hu.dtype)
        unit = piecewise_linear_hu(ct_hu, self.config.hu_breakpoints, self.config.hu_targets)
        features = self.encoder(torch.cat([unit, host_mask.to(ct_hu.dtype), weight], dim=1))
        condition = self.lesion_type_embeddings(lesion_type_ids)[:, :, None, None, None]
        features = [*features[:-1], features[-1] + condition]
        head = self.residual_head(self.decoder(features))
        width = self.config.synthesis_residual_smoothing
        if width > 1:  # a fixed low-pass: texture is learned at the scale of a few voxels, not one
            head = F.avg_pool3d(head, width, stride=1, padding=width // 2, count_include_pad=False)
        residual = self.config.synthesis_residual_bound_hu * torch.tanh(head) * weight
        output = PastaLesionSynthesisOutput(residual_hu=residual, refined_hu=ct_hu + residual)
        return output if return_dict else output.to_tuple()


PASTA_AUTO_CLASSES: tuple[type[PastaPreTrainedModel], ...] = (
    PastaModel,
    PastaForSegmentation,
    PastaForClassification,
    PastaForMaskedImageModeling,
    PastaForReportGeneration,
)

__all__ = [
    "PastaForClassification",
    "PastaForLesionSynthesis",
    "PastaForMaskedImageModeling",
    "PastaForReportGeneration",
    "PastaForSegmentation",
    "PastaForSurvival",
    "PastaModel",
    "PastaPreTrainedModel",
]
