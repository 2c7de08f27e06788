"""PASTA image processor: from a CT file to model inputs, and from voxel outputs back to the CT's grid.

``preprocess`` reads NIfTI, DICOM (file, folder) or a zip of either, reorients to RAS+ voxel order,
resamples to the model's voxel size with MONAI, and applies the configured intensity scheme.
Every call returns a :class:`PastaGeometry` per volume; ``postprocess_segmentation`` uses it to put
a label map on the input's own grid and affine, so a written mask overlays its CT.

``predict_segmentation`` runs a segmentation model over a whole scan with MONAI's sliding windows
(overlap, Gaussian blending) and streams the blended scores: it holds one window-thick slab of
scores instead of the whole volume's. Memory knob: ``sliding_window_batch_size`` (windows per
forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TypedDict, TypeVar

import numpy as np
import torch
from transformers.image_processing_base import BatchFeature, ImageProcessingMixin
from transformers.utils import logging

from .image_io import (
    CanonicalTransform,
    ImageReadError,
    Volume,
    check_affine,
    check_volume,
    from_canonical,
    load_image,
    resample_to_grid,
    resample_to_spacing,
    to_canonical,
)
from .organs import TOTALSEGMENTATOR_TOTAL
from .report import voxel_spacing

logger = logging.get_logger(__name__)

#: What ``preprocess`` accepts for one volume: a path, a loaded :class:`Volume`, or ``(array, affine)``.
VolumeInput = str | Path | Volume | tuple[np.ndarray, np.ndarray]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass
class PastaGeometry:
    """How one volume went from its own grid to the model grid (and how to come back).

    Attributes:
        source: where the volume came from (for messages).
        input_shape / input_affine: the input's own grid (affine: voxel -> RAS+ mm).
        canonical: the reorientation to RAS+ voxel order (flips and permutation, no resampling).
        canonical_shape / canonical_affine: the reoriented grid.
        model_shape / model_affine: the resampled grid the model sees.
    """

    source: str
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    canonical: CanonicalTransform
    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray

    @property
    def model_spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in voxel_spacing(self.model_affine))


class PastaImageProcessorKwargs(TypedDict, total=False):
    """Settings of :class:`PastaImageProcessor` that ``from_pretrained(..., **kwargs)`` may override."""

    target_spacing_mm: list[float]
    intensity_scheme: str
    clip_percentiles: list[float]
    hu_breakpoints: list[float]
    hu_targets: list[float]
    in_channels: int
    patch_size: list[int]
    size_divisor: int
    sliding_window_overlap: float
    sliding_window_batch_size: int
    sliding_window_mode: str


class PastaImageProcessor(ImageProcessingMixin):
    r"""Turns CT (and optional PET) volumes into PASTA inputs and maps voxel outputs back.

    Args:
        target_spacing_mm (`list[float]`): voxel size of the model grid (mm).
        intensity_scheme (`str`): ``"zscore"`` (clip to ``clip_percentiles`` then z-score) or
            ``"pasta_hu"`` (piecewise-linear map of HU ``hu_breakpoints`` -> ``hu_targets``,
            clipped outside). A PET channel is always clipped and z-scored.
        clip_percentiles (`list[float]`): lower and upper percentile of the clip (zscore).
        hu_breakpoints / hu_targets (`list[float]`): the piecewise-linear HU map (pasta_hu).
        in_channels (`int`): 1 (CT) or 2 (CT + PET, the PET resampled onto the CT's model grid).
        patch_size (`list[int]`): sliding-window size in voxels, and the crop of scan-level models.
        size_divisor (`int`): spatial sizes the network accepts are multiples of it.
        sliding_window_overlap (`float`): overlap of neighbouring windows (fraction of the window).
        sliding_window_batch_size (`int`): windows per forward pass (the memory knob: activations
            grow with it; on CPU a few windows per pass are faster per window than one at a time).
        sliding_window_mode (`str`): ``"gaussian"`` or ``"constant"`` blending.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = PastaImageProcessorKwargs

    def __init__(
        self,
        target_spacing_mm: Sequence[float] = (1.5, 1.5, 1.5),
        intensity_scheme: str = "zscore",
        clip_percentiles: Sequence[float] = (0.5, 99.5),
        hu_breakpoints: Sequence[float] = (-1000.0, -200.0, 200.0, 1000.0),
        hu_targets: Sequence[float] = (0.0, 0.2, 0.9, 1.0),
        in_channels: int = 1,
        patch_size: Sequence[int] = (64, 64, 64),
        size_divisor: int = 16,
        sliding_window_overlap: float = 0.5,
        sliding_window_batch_size: int = 4,
        sliding_window_mode: str = "gaussian",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if intensity_scheme not in ("zscore", "pasta_hu"):
            raise ValueError(f"intensity_scheme must be 'zscore' or 'pasta_hu', got {intensity_scheme!r}")
        if in_channels not in (1, 2):
            raise ValueError(f"in_channels must be 1 (CT) or 2 (CT + PET), got {in_channels}")
        if any(p % size_divisor for p in patch_size):
            raise ValueError(f"patch_size {list(patch_size)} must be multiples of size_divisor={size_divisor}")
        self.target_spacing_mm = [float(s) for s in target_spacing_mm]
        self.intensity_scheme = intensity_scheme
        self.clip_percentiles = [float(p) for p in clip_percentiles]
        self.hu_breakpoints = [float(v) for v in hu_breakpoints]
        self.hu_targets = [float(v) for v in hu_targets]
        self.in_channels = int(in_channels)
        self.patch_size = [int(p) for p in patch_size]
        self.size_divisor = int(size_divisor)
        self.sliding_window_overlap = float(sliding_window_overlap)
        self.sliding_window_batch_size = int(sliding_window_batch_size)
        self.sliding_window_mode = sliding_window_mode

    @classmethod
    def from_model_config(cls, config: Any, **overrides: Any) -> "PastaImageProcessor":
        """The processor matching a :class:`PastaConfig` (spacing, intensity scheme, channels, patch)."""
        settings = dict(
            target_spacing_mm=list(config.target_spacing_mm),
            intensity_scheme=config.intensity_scheme,
            clip_percentiles=list(config.clip_percentiles),
            hu_breakpoints=list(config.hu_breakpoints),
            hu_targets=list(config.hu_targets),
            in_channels=config.in_channels,
            patch_size=list(config.patch_size),
            size_divisor=2 ** (len(config.hidden_sizes) - 1),
        )
        settings.update(overrides)
        return cls(**settings)

    # ----------------------------------------------------------------------------------------
    # Reading and intensities
    # ----------------------------------------------------------------------------------------

    @staticmethod
    def load(image: VolumeInput) -> Volume:
        """A :class:`Volume` from a path (NIfTI, DICOM file / folder, zip), a Volume or ``(array, affine)``.

        Raises:
            ImageReadError: naming the input and the problem (2D / 4D data, NaNs, bad affine, ...).
        """
        if isinstance(image, Volume):
            return Volume(
                check_volume(image.array, image.source), check_affine(image.affine, image.source), image.source
            )
        if isinstance(image, (str, Path)):
            return load_image(image)
        if isinstance(image, tuple) and len(image) == 2:
            array, affine = image
            return Volume(check_volume(np.asarray(array), "<array>"), check_affine(affine, "<array>"))
        if isinstance(image, (np.ndarray, torch.Tensor)):
            raise ImageReadError(
                "<array>: an array alone has no geometry; pass (array, affine) with the voxel -> RAS+ mm affine"
            )
        raise ImageReadError(
            f"cannot read a volume from {type(image).__name__}; pass a path, a Volume or (array, affine)"
        )

    def normalize_ct(self, hu: np.ndarray) -> np.ndarray:
        """The configured intensity scheme applied to CT values in HU (float32)."""
        if self.intensity_scheme == "pasta_hu":
            return np.interp(hu, self.hu_breakpoints, self.hu_targets).astype(np.float32)
        return self.zscore(hu)

    def zscore(self, values: np.ndarray) -> np.ndarray:
        """Clip to ``clip_percentiles`` of the volume, then subtract the mean and divide by the std."""
        values = values.astype(np.float32, copy=False)
        low, high = np.percentile(values, self.clip_percentiles)
        clipped = np.clip(values, low, high)
        std = float(clipped.std())
        return ((clipped - float(clipped.mean())) / (std if std > 1e-6 else 1.0)).astype(np.float32)

    # ----------------------------------------------------------------------------------------
    # To and from the model grid
    # ----------------------------------------------------------------------------------------

    def to_model_grid(self, volume: Volume, *, is_label: bool = False) -> tuple[np.ndarray, PastaGeometry]:
        """Reorient to RAS+ and resample to ``target_spacing_mm``; values are kept (HU stays HU)."""
        canonical, canonical_affine, transform = to_canonical(volume.array, volume.affine)
        resampled, model_affine = resample_to_spacing(
            canonical, canonical_affine, tuple(self.target_spacing_mm), is_label=is_label
        )
        geometry = PastaGeometry(
            source=volume.source,
            input_shape=tuple(int(s) for s in volume.array.shape),
            input_affine=np.asarray(volume.affine, dtype=np.float64),
            canonical=transform,
            canonical_shape=tuple(int(s) for s in canonical.shape),
            canonical_affine=np.asarray(canonical_affine, dtype=np.float64),
            model_shape=tuple(int(s) for s in resampled.shape),
            model_affine=np.asarray(model_affine, dtype=np.float64),
        )
        return resampled, geometry

    def resample_like(self, volume: VolumeInput, geometry: PastaGeometry, *, is_label: bool) -> np.ndarray:
        """Put another volume (a label map of the same scan, a PET) on the model grid of ``geometry``.

        The volume may have any grid and orientation; it is resampled through the world frame.
        """
        volume = self.load(volume)
        canonical, canonical_affine, _ = to_canonical(volume.array, volume.affine)
        return resample_to_grid(
            canonical, canonical_affine, geometry.model_affine, geometry.model_shape, is_label=is_label
        )

    def postprocess_segmentation(self, labels: torch.Tensor | np.ndarray, geometry: PastaGeometry) -> np.ndarray:
        """A label map of the model grid -> the input's own grid (same shape, voxel order, affine).

        ``labels`` is ``(x, y, z)`` or, as :meth:`predict_segmentation` returns it, ``(1, x, y, z)``.
        """
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.ndim == 4 and labels.shape[0] == 1:
            labels = labels[0]
        if tuple(labels.shape) != geometry.model_shape:
            raise ValueError(f"labels of shape {labels.shape} do not match the model grid {geometry.model_shape}")
        dtype = np.uint8 if labels.min() >= 0 and labels.max() <= 255 else np.int16
        back = resample_to_grid(
            labels.astype(dtype),
            geometry.model_affine,
            geometry.canonical_affine,
            geometry.canonical_shape,
            is_label=True,
        )
        return from_canonical(back, geometry.canonical)

    def preprocess(
        self,
        images: VolumeInput | Sequence[VolumeInput],
        pet: VolumeInput | Sequence[VolumeInput] | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Model inputs for one volume or a list of volumes (same model-grid shape to be batched).

        Returns:
            ``BatchFeature`` with ``pixel_values`` ``(batch, in_channels, x, y, z)`` (a torch tensor,
            or numpy with ``return_tensors="np"``) and ``geometry``: one :class:`PastaGeometry` each.

        Raises:
            ImageReadError: unreadable input (see :meth:`load`).
            ValueError: PET missing or unexpected for ``in_channels``, or unequal shapes in a batch.
        """
        single = not isinstance(images, (list, tuple)) or (
            isinstance(images, tuple) and len(images) == 2 and isinstance(images[0], np.ndarray)
        )
        images = [images] if single else list(images)
        if pet is None:
            pets: list[VolumeInput | None] = [None] * len(images)
        else:
            pets = [pet] if single else list(pet)
        if self.in_channels == 2 and any(p is None for p in pets):
            raise ValueError("this processor expects CT + PET (in_channels=2); pass pet=... for every CT")
        if self.in_channels == 1 and any(p is not None for p in pets):
            raise ValueError("this processor is for CT only (in_channels=1); a PET channel needs in_channels=2")
        arrays, geometries = [], []
        for image, pet_image in zip(images, pets):
            hu, geometry = self.to_model_grid(self.load(image))
            channels = [self.normalize_ct(hu)]
            if pet_image is not None:
                channels.append(self.zscore(self.resample_like(pet_image, geometry, is_label=False)))
            arrays.append(np.stack(channels))
            geometries.append(geometry)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"volumes of different model-grid shapes {sorted(shapes)} cannot be batched; "
                "preprocess them one at a time"
            )
        stacked = np.stack(arrays)
        pixel_values = torch.from_numpy(stacked) if return_tensors == "pt" else stacked
        return BatchFeature(data={"pixel_values": pixel_values, "geometry": geometries})

    __call__ = preprocess

    # ----------------------------------------------------------------------------------------
    # Inference helpers
    # ----------------------------------------------------------------------------------------

    def predict_segmentation(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class ids ``(batch, x, y, z)`` of whole scans, by sliding windows with Gaussian blending.

        The windows, their order and their blending weights are MONAI's (``dense_patch_slices``,
        ``compute_importance_map``), so the labels equal the argmax of MONAI's
        ``sliding_window_inference``. The blended scores are streamed along the first axis: only
        a slab one window thick is held (``num_labels x patch_x x y x z`` floats), never the
        scores of the whole volume, and each finished slab is reduced to uint8 labels.
        Memory knob: ``sliding_window_batch_size`` (windows per forward pass).
        """
        from monai.data.utils import compute_importance_map, dense_patch_slices

        parameter = next(model.parameters())
        roi = tuple(self.patch_size)
        labels = []
        with torch.inference_mode():
            for volume in pixel_values:
                size = tuple(volume.shape[1:])
                # like MONAI: pad up to the window size, half before and half after
                before = [max(r - n, 0) // 2 for r, n in zip(roi, size)]
                after = [max(r - n, 0) - b for r, n, b in zip(roi, size, before)]
                padding = [p for axis in reversed(range(3)) for p in (before[axis], after[axis])]
                volume = torch.nn.functional.pad(volume, padding)
                padded = tuple(volume.shape[1:])
                interval = [
                    r if r == n else max(int(r * (1 - self.sliding_window_overlap)), 1) for r, n in zip(roi, padded)
                ]
                windows = dense_patch_slices(padded, roi, interval)  # ordered by first-axis start
                weight = compute_importance_map(
                    roi, mode=self.sliding_window_mode, sigma_scale=0.125, device=parameter.device, dtype=torch.float32
                )
                result = self._stream_windows(model, volume.to(parameter.device), windows, weight, roi[0])
                crop = tuple(slice(b, b + n) for b, n in zip(before, size))
                labels.append(result[crop].to(pixel_values.device))
        return torch.stack(labels)

    def _stream_windows(
        self, model: torch.nn.Module, volume: torch.Tensor, windows: list, weight: torch.Tensor, depth: int
    ) -> torch.Tensor:
        """Blend window scores into a slab buffer that moves along axis 0; finished planes become labels."""
        parameter = next(model.parameters())
        spatial = volume.shape[1:]
        labels = torch.zeros(spatial, dtype=torch.uint8, device=volume.device)
        scores: torch.Tensor | None = None
        start = 0  # first-axis index of the buffer's first plane
        batch = max(self.sliding_window_batch_size, 1)
        for first in range(0, len(windows), batch):
            group = windows[first : first + batch]
            logits = model(
                pixel_values=torch.stack([volume[(slice(None), *w)] for w in group]).to(parameter.dtype)
            ).logits
            if scores is None:
                if logits.shape[1] > 256:
                    labels = labels.to(torch.int16)
                scores = torch.zeros((logits.shape[1], depth, *spatial[1:]), dtype=torch.float32, device=volume.device)
            weighted = logits.float().mul_(weight)
            for window, window_scores in zip(group, weighted):
                offset = window[0].start - start
                if offset > 0:  # planes before this window are final: no later window reaches them
                    labels[start : window[0].start] = scores[:, :offset].argmax(dim=0).to(labels.dtype)
                    kept = scores[:, offset:].clone()
                    scores[:, : depth - offset] = kept
                    scores[:, depth - offset :] = 0
                    start = window[0].start
                scores[(slice(None), slice(0, depth), *window[1:])] += window_scores
        labels[start : start + depth] = scores[:, : spatial[0] - start].argmax(dim=0).to(labels.dtype)
        return labels

    def crop(
        self, pixel_values: torch.Tensor, center: Sequence[float] | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """A ``size`` (default ``patch_size``) crop of ``(B, C, x, y, z)`` around a voxel ``center``
        (default the volume centre), zero-padded where it leaves the volume (0 = mean intensity)."""
        size = [int(s) for s in (size or self.patch_size)]
        center = [s / 2 for s in pixel_values.shape[2:]] if center is None else list(center)
        return crop_or_pad(pixel_values, center, size)


def crop_or_pad(array: ArrayT, center: Sequence[float], size: Sequence[int]) -> ArrayT:
    """A ``size`` window of the last three axes of ``array`` (numpy or torch) around voxel ``center``,
    zero where the window leaves the array; leading axes (batch, channels) are kept."""
    size = [int(s) for s in size]
    spatial = array.shape[-3:]
    shape = (*array.shape[:-3], *size)
    out = array.new_zeros(shape) if isinstance(array, torch.Tensor) else np.zeros(shape, dtype=array.dtype)
    src, dst = [], []
    for c, n, s in zip(center, spatial, size):
        start = int(round(c - s / 2))
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, lo - start + max(hi - lo, 0)))
    out[(..., *dst)] = array[(..., *src)]
    return out


def relabel(label_map: np.ndarray, id_to_class: Mapping[int, int]) -> np.ndarray:
    """uint8 class ids from a label map's integer ids: ``id_to_class[id]``, 0 for ids not listed
    (and for negative ids). Fractional values are rounded to the nearest id."""
    ids = np.asarray(label_map)
    if ids.dtype.kind == "f":
        ids = np.rint(ids)
    ids = ids.astype(np.int64)
    lookup = np.zeros(max(int(ids.max(initial=0)), max(id_to_class, default=0)) + 1, dtype=np.uint8)
    for label_id, class_id in id_to_class.items():
        if label_id > 0:
            lookup[label_id] = class_id
    return lookup[np.clip(ids, 0, len(lookup) - 1)]


def segmentation_targets(
    organ_map: np.ndarray,
    lesion_mask: np.ndarray | None,
    config: Any,
    label_names: Mapping[int, str] = TOTALSEGMENTATOR_TOTAL,
) -> np.ndarray:
    """Training targets of :class:`PastaForSegmentation` from an organ map and a lesion mask.

    Args:
        organ_map: organ label ids (``label_names`` convention, TotalSegmentator by default).
        lesion_mask: nonzero where a lesion is (any lesion id), or None.
        config: the :class:`PastaConfig` (``id2label``, ``segmentation_organs``, ``lesion_label``).
        label_names: organ id -> name of ``organ_map``.

    Returns:
        uint8 class ids: organs merged as ``config.segmentation_organs`` says, unlisted organs 0,
        lesions ``config.lesion_label_id`` on top.
    """
    name_to_class = {
        organ: config.label2id[class_name]
        for class_name, organs in config.segmentation_organs.items()
        for organ in organs
    }
    targets = relabel(
        organ_map, {label_id: name_to_class[name] for label_id, name in label_names.items() if name in name_to_class}
    )
    if lesion_mask is not None:
        targets[np.asarray(lesion_mask) > 0] = config.lesion_label_id
    return targets


PastaImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["PastaGeometry", "PastaImageProcessor", "crop_or_pad", "relabel", "segmentation_targets"]
