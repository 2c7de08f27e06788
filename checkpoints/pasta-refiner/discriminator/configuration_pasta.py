"""PASTA model configuration: the 3D CT encoder, its task heads and the report text decoder.

The defaults describe ``pasta_small`` (see :mod:`modeling_pasta.variants` for the named variants).
Segmentation classes, classification tasks and their class names come from the shared organ and
report conventions (:mod:`.organs`, :mod:`.report`), so a prediction maps back to organ names and
report fields without a side table.
"""

# No ``from __future__ import annotations`` here: the strict dataclass validation reads the field types.
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .organs import ORGAN_GROUPS
from .report import CATEGORICAL_ATTRIBUTES, LESION_TYPES, PHASES

#: Segmentation classes (besides background and lesion) -> the TotalSegmentator "total" labels they
#: merge. Lung lobes and kidney sides stay separate because the report names them (location).
DEFAULT_SEGMENTATION_ORGANS: dict[str, list[str]] = {
    "spleen": ["spleen"],
    "kidney_right": ["kidney_right"],
    "kidney_left": ["kidney_left"],
    "gallbladder": ["gallbladder"],
    "liver": ["liver"],
    "stomach": ["stomach"],
    "pancreas": ["pancreas"],
    "lung_upper_lobe_left": ["lung_upper_lobe_left"],
    "lung_lower_lobe_left": ["lung_lower_lobe_left"],
    "lung_upper_lobe_right": ["lung_upper_lobe_right"],
    "lung_middle_lobe_right": ["lung_middle_lobe_right"],
    "lung_lower_lobe_right": ["lung_lower_lobe_right"],
    "esophagus": ["esophagus"],
    "small_bowel": ["small_bowel"],
    "duodenum": ["duodenum"],
    "colon": ["colon"],
    "urinary_bladder": ["urinary_bladder"],
    "vertebrae": list(ORGAN_GROUPS["vertebrae"]),
    "aorta": ["aorta"],
    "inferior_vena_cava": ["inferior_vena_cava"],
    "heart": ["heart"],
}

LESION_LABEL = "lesion"


def default_segmentation_labels() -> dict[int, str]:
    """``id2label`` of the segmentation head: 0 background, the organ classes, the lesion class last."""
    names = ["background", *DEFAULT_SEGMENTATION_ORGANS, LESION_LABEL]
    return dict(enumerate(names))


def default_classification_tasks() -> dict[str, list[str]]:
    """Task name -> class names of the classification head (first class = negative / "none").

    ``detection`` and ``phase`` describe the scan; the others describe one lesion. Staging has no
    labels in the synthetic corpus: add e.g. ``{"t_stage": ["T1", "T2", "T3", "T4"]}`` to fine-tune.
    """
    tasks: dict[str, list[str]] = {
        "detection": ["absent", "present"],
        "phase": list(PHASES),
        "lesion_type": ["none", *LESION_TYPES],
        "malignancy": ["benign", "malignant"],
    }
    tasks.update({name: list(classes) for name, classes in CATEGORICAL_ATTRIBUTES.items()})
    return tasks


@strict
class PastaTextConfig(PreTrainedConfig):
    r"""Configuration of the report text decoder (a pre-norm transformer decoder with cross-attention).

    Args:
        vocab_size (`int`): size of the report tokenizer's vocabulary.
        hidden_size (`int`): width of the token embeddings and decoder layers.
        num_hidden_layers (`int`): number of decoder layers.
        num_attention_heads (`int`): attention heads of self- and cross-attention.
        intermediate_size (`int`): width of the feed-forward layers.
        max_position_embeddings (`int`): longest report, in tokens (learned positions).
        dropout (`float`): dropout on embeddings, attention output and feed-forward output.
        attention_dropout (`float`): dropout on attention probabilities.
        layer_norm_eps (`float`): epsilon of the layer norms.
        initializer_range (`float`): std of the normal initialisation of linear and embedding weights.
        pad_token_id / bos_token_id / eos_token_id / decoder_start_token_id (`int`): special token ids
            (the order :func:`modeling_pasta.tokenization_pasta.train_report_tokenizer` gives them).
        use_cache (`bool`): keep self- and cross-attention keys/values between generation steps.
    """

    model_type = "pasta_text"
    base_config_key = "text_config"

    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1
    use_cache: bool = True
    is_decoder: bool = True
    tie_word_embeddings: bool = False

    def validate_text_architecture(self) -> None:
        """Check that the attention heads divide the hidden size."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"text hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )


@strict
class PastaConfig(PreTrainedConfig):
    r"""Configuration of the PASTA 3D CT (or PET/CT) foundation model and its heads.

    The encoder is an nnU-Net style 3D U-Net encoder: ``len(hidden_sizes)`` stages of 3x3x3
    convolutions with instance norm and leaky ReLU, the first convolution of every stage after the
    first one strided by 2 (``encoder_type="plain"``), or residual basic blocks with the same
    layout (``"residual"``). The U-Net decoder (segmentation, masked image modelling) mirrors it with
    transposed convolutions and skip connections.

    Args:
        in_channels (`int`): 1 for CT, 2 for PET/CT (channel 0 CT, channel 1 PET).
        encoder_type (`str`): ``"plain"`` (conv blocks) or ``"residual"`` (basic residual blocks).
        hidden_sizes (`list[int]`): feature width of each encoder stage (full resolution first).
        depths (`list[int]`): convolution blocks per encoder stage.
        decoder_depths (`list[int]`): convolutions per decoder stage, deepest first
            (``len(hidden_sizes) - 1`` entries).
        negative_slope (`float`): slope of the leaky ReLU.
        norm_eps (`float`): epsilon of the instance norms.
        patch_size (`list[int]`): training patch / sliding-window size in voxels (RAS+ voxel order).
        target_spacing_mm (`list[float]`): voxel size the model works at (mm).
        intensity_scheme (`str`): ``"zscore"`` (percentile clip then z-score; segmentation and
            masked image modelling) or ``"pasta_hu"`` (piecewise-linear HU map; attribute heads).
        clip_percentiles (`list[float]`): percentiles clipped before the z-score.
        hu_breakpoints (`list[float]`) / hu_targets (`list[float]`): the piecewise-linear HU map of
            ``"pasta_hu"`` (values outside the breakpoints are clipped).
        id2label (`dict[int, str]`): segmentation classes; 0 is background, ``lesion_label`` (when
            set) the lesion.
        segmentation_organs (`dict[str, list[str]]`): segmentation class -> the TotalSegmentator
            "total" label names it merges (turns a corpus organ map into training targets).
        lesion_label (`str` or `None`): name of the lesion class in ``id2label``; None for a
            segmentation model without a lesion class (e.g. organs only, fine-tuned on MRI).
        dice_loss_weight (`float`): weight of the soft Dice term added to cross-entropy.
        classification_tasks (`dict[str, list[str]]`): task -> class names of the classification head.
        scan_level_tasks (`list[str]`): tasks that describe the whole scan; the others describe the
            lesion given as ``lesion_mask``.
        classifier_hidden_size (`int`): width of the hidden layer of each task / survival head
            (0 = a single linear layer).
        classifier_dropout (`float`): dropout before the task and survival heads.
        mim_block_size (`list[int]`): masked image modelling block size in voxels.
        mim_mask_ratio (`float`): fraction of blocks masked, per sample and per channel.
        mim_visible_loss_weight (`float`): weight of the visible-voxel MSE in the reconstruction loss.
        synthesis_residual_bound_hu (`float`): largest change (HU) the lesion refiner
            (:class:`PastaForLesionSynthesis`) may make to a voxel; its residual is
            ``bound * tanh(.)`` times the lesion's blending weight.
        synthesis_residual_smoothing (`int`): width (voxels) of the box filter the refiner's
            residual goes through before the bound; 3 removes the checkerboard patterns strided
            decoders produce under adversarial training (1 = no filter).
        text_config (`PastaTextConfig` or `dict`): the report text decoder.
        initializer_range (`float`): std of the normal initialisation of linear layers.
    """

    model_type = "pasta"
    sub_configs_defaults = {"text_config": PastaTextConfig}

    in_channels: int = 1
    encoder_type: Literal["plain", "residual"] = "plain"
    hidden_sizes: list[int] | tuple[int, ...] = (16, 32, 64, 128, 256)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2, 2)
    decoder_depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    negative_slope: float = 0.01
    norm_eps: float = 1e-5
    patch_size: list[int] | tuple[int, ...] = (64, 64, 64)
    target_spacing_mm: list[float | int] | tuple[float | int, ...] = (1.5, 1.5, 1.5)
    intensity_scheme: Literal["zscore", "pasta_hu"] = "zscore"
    clip_percentiles: list[float | int] | tuple[float | int, ...] = (0.5, 99.5)
    hu_breakpoints: list[float | int] | tuple[float | int, ...] = (-1000.0, -200.0, 200.0, 1000.0)
    hu_targets: list[float | int] | tuple[float | int, ...] = (0.0, 0.2, 0.9, 1.0)
    segmentation_organs: dict[str, list[str]] | None = None
    lesion_label: str | None = LESION_LABEL
    dice_loss_weight: float | int = 1.0
    classification_tasks: dict[str, list[str]] | None = None
    scan_level_tasks: list[str] | tuple[str, ...] = ("detection", "phase")
    classifier_hidden_size: int = 0
    classifier_dropout: float | int = 0.0
    mim_block_size: list[int] | tuple[int, ...] = (16, 16, 16)
    mim_mask_ratio: float = 0.5
    mim_visible_loss_weight: float | int = 0.2
    synthesis_residual_bound_hu: float | int = 150.0
    synthesis_residual_smoothing: int = 3
    text_config: dict | PastaTextConfig | None = None
    initializer_range: float = 0.02
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            self.id2label = default_segmentation_labels()
        if self.segmentation_organs is None:
            self.segmentation_organs = {k: list(v) for k, v in DEFAULT_SEGMENTATION_ORGANS.items()}
        if self.classification_tasks is None:
            self.classification_tasks = default_classification_tasks()
        super().__post_init__(**kwargs)
        self.label2id = {name: idx for idx, name in self.id2label.items()}

    @property
    def num_stages(self) -> int:
        """Number of encoder stages (the deepest features are downsampled ``2**(num_stages-1)`` times)."""
        return len(self.hidden_sizes)

    @property
    def lesion_label_id(self) -> int:
        """Segmentation class id of the lesion.

        Raises:
            ValueError: when the model has no lesion class (``lesion_label=None``).
        """
        if self.lesion_label is None:
            raise ValueError(
                "this model has no lesion class (lesion_label=None, classes "
                f"{list(self.id2label.values())}); set lesion_label to one of them for lesion segmentation"
            )
        return self.label2id[self.lesion_label]

    def validate_pasta_architecture(self) -> None:
        """Cross-field checks, with messages that say what to pass instead."""
        stages = len(self.hidden_sizes)
        if stages < 2:
            raise ValueError(f"hidden_sizes needs at least 2 stages, got {list(self.hidden_sizes)}")
        if len(self.depths) != stages:
            raise ValueError(
                f"depths has {len(self.depths)} entries but hidden_sizes has {stages}; give one depth per stage"
            )
        if len(self.decoder_depths) != stages - 1:
            raise ValueError(
                f"decoder_depths needs {stages - 1} entries (one per decoder stage), got {len(self.decoder_depths)}"
            )
        if any(d < 1 for d in (*self.depths, *self.decoder_depths)):
            raise ValueError("every stage needs at least one convolution block (depths >= 1)")
        if self.in_channels not in (1, 2):
            raise ValueError(f"in_channels must be 1 (CT) or 2 (PET/CT), got {self.in_channels}")
        factor = 2 ** (stages - 1)
        if len(self.patch_size) != 3 or any(p % factor for p in self.patch_size):
            raise ValueError(
                f"patch_size must be 3 sizes divisible by {factor} (2**(stages-1)), got {list(self.patch_size)}"
            )
        if len(self.target_spacing_mm) != 3 or any(s <= 0 for s in self.target_spacing_mm):
            raise ValueError(f"target_spacing_mm must be 3 positive sizes in mm, got {list(self.target_spacing_mm)}")
        if len(self.hu_breakpoints) != len(self.hu_targets) or list(self.hu_breakpoints) != sorted(self.hu_breakpoints):
            raise ValueError("hu_breakpoints must be increasing and as many as hu_targets")
        if len(self.mim_block_size) != 3 or not 0.0 < self.mim_mask_ratio < 1.0:
            raise ValueError("mim_block_size needs 3 sizes and mim_mask_ratio must lie in (0, 1)")
        if not self.synthesis_residual_bound_hu > 0:
            raise ValueError(f"synthesis_residual_bound_hu must be positive (HU), got {self.synthesis_residual_bound_hu}")
        if self.synthesis_residual_smoothing < 1 or self.synthesis_residual_smoothing % 2 == 0:
            raise ValueError(
                f"synthesis_residual_smoothing must be an odd width in voxels (1 = none), got {self.synthesis_residual_smoothing}"
            )
        names = list(self.id2label.values())
        if self.id2label.get(0) != "background":
            raise ValueError(f"id2label needs 0 -> 'background', got {names}")
        if self.lesion_label is not None and self.lesion_label not in names:
            raise ValueError(
                f"id2label has no {self.lesion_label!r} class (lesion_label), got {names}; "
                "add it or pass lesion_label=None for a model without a lesion class"
            )
        unknown = sorted(set(self.segmentation_organs) - set(names))
        if unknown:
            raise ValueError(f"segmentation_organs names classes missing from id2label: {unknown}")
        for task, classes in self.classification_tasks.items():
            if len(classes) < 2:
                raise ValueError(f"classification task {task!r} needs at least 2 classes, got {classes}")
        missing = sorted(set(self.scan_level_tasks) - set(self.classification_tasks))
        if missing:
            raise ValueError(f"scan_level_tasks {missing} are not classification tasks")


PastaConfig.register_for_auto_class("AutoConfig")

__all__ = ["PastaConfig", "PastaTextConfig"]
