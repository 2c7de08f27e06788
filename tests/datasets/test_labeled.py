"""A user's labeled set: folder and CSV parsing, error messages, model-grid patches and label mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets_pasta.patches import collate_examples
from datasets_pasta.labeled import (
    FinetuneDataset,
    LabeledCase,
    LabeledDataError,
    find_labeled_cases,
    load_labeled_cases,
    mask_to_classes,
    organ_segmentation_classes,
    read_labeled_csv,
    split_cases,
)
from modeling_pasta.image_io import save_nifti
from modeling_pasta.image_processing_pasta import PastaImageProcessor
from modeling_pasta.variants import pasta_config

SHAPE = (20, 20, 20)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def write_case(folder: Path, name: str, seed: int, mask_suffix: str = "_seg", labels: tuple[int, ...] = (1,)) -> None:
    """A noisy image with one bright cube per label id (cube k at a different place), and its mask."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 10.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    for k, label in enumerate(labels):
        start = 3 + 6 * k
        mask[start : start + 4, 6:12, 6:12] = label
    image[mask > 0] += 200.0
    save_nifti(image, AFFINE, folder / f"{name}.nii.gz")
    if mask_suffix:
        save_nifti(mask, AFFINE, folder / f"{name}{mask_suffix}.nii.gz")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labeled")
    for i in range(3):
        write_case(root, f"case{i}", seed=i)
    write_case(root, "unlabeled", seed=9, mask_suffix="")
    return root


@pytest.fixture(scope="module")
def config():
    return pasta_config("pasta_tiny", id2label={0: "background", 1: "lesion"}, segmentation_organs={})


@pytest.fixture(scope="module")
def processor(config):
    return PastaImageProcessor.from_model_config(config)


def malignancy_config():
    return pasta_config("pasta_tiny", classification_tasks={"malignancy": ["benign", "malignant"]}, scan_level_tasks=[])


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Finding and reading cases
# --------------------------------------------------------------------------------------------


def test_folder_pairs_images_with_masks_and_skips_unlabeled(folder):
    cases = find_labeled_cases(folder)
    assert [c.case_id for c in cases] == ["case0", "case1", "case2"]
    assert all(c.mask is not None and c.mask.name == f"{c.case_id}_seg.nii.gz" for c in cases)
    assert load_labeled_cases(folder) == cases


def test_folder_errors(tmp_path):
    with pytest.raises(LabeledDataError, match="no such folder"):
        find_labeled_cases(tmp_path / "missing")
    write_case(tmp_path, "only_image", seed=0, mask_suffix="")
    with pytest.raises(LabeledDataError, match=r"no image with a mask found.*_seg\.nii\.gz"):
        find_labeled_cases(tmp_path)


def test_csv_resolves_relative_paths_and_reads_every_column(folder, tmp_path):
    text = (
        "image,mask,label,time,event,case_id,site\n"
        f"{folder}/case0.nii.gz,{folder}/case0_seg.nii.gz,benign,12.5,0,a,x\n"
        "case1.nii.gz,,malignant,3,1,,y\n"
        "\n"
    )
    path = write_csv(folder / "cases.csv", text)
    try:
        cases = read_labeled_csv(path)
    finally:
        path.unlink()
    assert [c.case_id for c in cases] == ["a", "case1"]
    assert cases[0].mask == folder / "case0_seg.nii.gz" and cases[1].mask is None
    assert cases[1].image == folder / "case1.nii.gz"
    assert (cases[0].label, cases[0].time, cases[0].event) == ("benign", 12.5, 0.0)
    assert (cases[1].label, cases[1].time, cases[1].event) == ("malignant", 3.0, 1.0)
    assert cases[1].source.endswith("cases.csv: row 3")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\nx.nii.gz,a\n", r"no 'image' column \(columns found: \['path', 'label'\]\)"),
        ("image,time\ncase0.nii.gz,3\n", "needs both a 'time' and an 'event' column"),
        ("image,mask\ncase0.nii.gz,\ncase1.nii.gz,nope.nii.gz\n", r"row 3, column 'mask': no such file"),
        ("image\n\n", "no cases"),
        ("image,label\n,a\n", r"row 2, column 'image': empty"),
        ("image,time,event\ncase0.nii.gz,soon,1\n", r"row 2, column 'time': 'soon' is not a number"),
        ("image,time,event\ncase0.nii.gz,-2,1\n", r"row 2, column 'time': -2.0 is negative"),
        ("image,time,event\ncase0.nii.gz,5,maybe\n", r"row 2, column 'event': 'maybe' is not 1"),
        ("image,time,event\ncase0.nii.gz,5,\n", r"row 2, column 'event': empty, but the row has a survival time"),
        ("image\ncase0.nii.gz\ncase0.nii.gz\n", r"row 3, column 'case_id': 'case0' is already used by row 2"),
    ],
)
def test_csv_errors_name_file_row_and_column(folder, tmp_path, text, message):
    text = text.replace("case0", str(folder / "case0")).replace("case1", str(folder / "case1"))
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(LabeledDataError, match=message) as info:
        read_labeled_csv(path)
    assert str(path) in str(info.value)


def test_missing_csv(tmp_path):
    with pytest.raises(LabeledDataError, match="no such CSV file"):
        load_labeled_cases(tmp_path / "cases.csv")


def test_split_is_seeded_stratified_and_keeps_both_sides():
    cases = [LabeledCase(image=Path(f"c{i}.nii.gz"), label="a" if i < 6 else "b") for i in range(10)]
    train, val = split_cases(cases, 0.2, seed=1)
    assert len(val) == 2 and {c.label for c in val} == {"a", "b"}
    assert sorted(c.case_id for c in train + val) == sorted(c.case_id for c in cases)
    assert split_cases(cases, 0.2, seed=1) == (train, val)
    assert split_cases(cases[:2], 0.1)[1] != [] and split_cases(cases, 0.0) == (cases, [])
    with pytest.raises(LabeledDataError, match="cannot be split"):
        split_cases(cases[:1], 0.2)
    with pytest.raises(LabeledDataError, match=r"\[0, 1\)"):
        split_cases(cases, 1.0)


def test_organ_classes_map_label_ids_and_merge_groups():
    names = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 9: "aorta"}
    id2label, mask_classes = organ_segmentation_classes(names, ["liver", "kidney", "spleen"])
    assert id2label == {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}
    assert mask_classes == {5: 1, 2: 2, 3: 2, 1: 3}
    mask = np.array([0, 1, 2, 3, 5, 9, 200])
    assert mask_to_classes(mask, mask_classes).tolist() == [0, 3, 2, 2, 1, 0, 0]
    assert mask_to_classes(mask, None, foreground_class=4).tolist() == [0, 4, 4, 4, 4, 4, 4]
    with pytest.raises(LabeledDataError, match="'pancreas' is not in the label names; they have: aorta, kidney_left"):
        organ_segmentation_classes(names, ["liver", "pancreas"])


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


def test_segmentation_patches_shapes_labels_and_oversampling(folder, processor, config):
    cases = find_labeled_cases(folder)
    dataset = FinetuneDataset(cases, processor, config, "segmentation", patches_per_epoch=24, seed=3)
    assert len(dataset) == 24 and len(dataset.scans) == 3
    example = dataset[0]
    assert set(example) == {"pixel_values", "labels"}
    assert example["pixel_values"].shape == (1, 16, 16, 16) and example["pixel_values"].dtype == np.float32
    assert example["labels"].shape == (16, 16, 16) and example["labels"].dtype == np.int64
    assert set(np.unique(np.concatenate([dataset[i]["labels"].ravel() for i in range(24)]))) == {0, 1}
    with_lesion = np.mean([dataset[i]["labels"].any() for i in range(24)])
    assert with_lesion >= 0.6  # (1 + lesion_fraction) / 2 = 0.75 of the centres are on the lesion
    # the image grid is the processor's (4 mm, RAS+) and the lesion keeps its size (4 x 6 x 6 voxels)
    assert dataset.scans[0].pixel_values.shape == (1, *SHAPE)
    assert int(dataset.scans[0].targets.sum()) == 4 * 6 * 6
    np.testing.assert_array_equal(dataset[5]["labels"], dataset[5]["labels"])  # reproducible
    before = dataset[5]["pixel_values"]
    dataset.set_epoch(1)
    assert not np.array_equal(before, dataset[5]["pixel_values"])  # another epoch, other patches
    batch = collate_examples([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 1, 16, 16, 16) and batch["labels"].dtype == torch.int64


def test_organ_label_map_is_mapped_to_model_classes(tmp_path):
    write_case(tmp_path, "mr", seed=0, mask_suffix="_organs", labels=(5, 1, 7))
    id2label, mask_classes = organ_segmentation_classes({1: "spleen", 5: "liver", 7: "aorta"}, ["liver", "spleen"])
    with pytest.raises(Exception, match=r"id2label has no 'lesion' class \(lesion_label\)"):
        pasta_config("pasta_tiny", id2label=id2label, segmentation_organs={})
    config = pasta_config("pasta_tiny", id2label=id2label, lesion_label=None, segmentation_organs={})
    processor = PastaImageProcessor.from_model_config(config)
    cases = find_labeled_cases(tmp_path)
    dataset = FinetuneDataset(cases, processor, config, "segmentation", mask_classes=mask_classes)
    targets = dataset.scans[0].targets
    assert sorted(np.unique(targets).tolist()) == [0, 1, 2]
    assert int((targets == 1).sum()) == int((targets == 2).sum()) == 4 * 6 * 6  # aorta became background
    with pytest.raises(ValueError, match="no lesion class"):
        FinetuneDataset(find_labeled_cases(tmp_path), processor, config, "segmentation")  # a binary mask needs one
    with pytest.raises(LabeledDataError, match=r"class ids \[5\] the model does not have"):
        FinetuneDataset(find_labeled_cases(tmp_path), processor, config, "segmentation", mask_classes={1: 5})


def test_mask_that_does_not_overlay_its_image_names_both_files(tmp_path, processor, config):
    write_case(tmp_path, "a", seed=0, mask_suffix="")
    save_nifti(np.zeros((20, 20, 18), np.uint8), AFFINE, tmp_path / "a_seg.nii.gz")
    write_case(tmp_path, "b", seed=1, mask_suffix="")
    save_nifti(np.zeros(SHAPE, np.uint8), np.diag([-4.0, 4.0, 4.0, 1.0]), tmp_path / "b_seg.nii.gz")
    a, b = find_labeled_cases(tmp_path)
    shape = r"a_seg\.nii\.gz: mask shape \(20, 20, 18\) does not match the image .*a\.nii\.gz"
    with pytest.raises(LabeledDataError, match=shape):
        FinetuneDataset([a], processor, config, "segmentation")
    with pytest.raises(LabeledDataError, match=r"b_seg\.nii\.gz: mask affine does not match the image .*b\.nii\.gz"):
        FinetuneDataset([b], processor, config, "segmentation")


def test_classification_and_survival_examples(folder, processor):
    cases = find_labeled_cases(folder)
    labeled = [
        LabeledCase(image=c.image, mask=c.mask, label=("benign", "malignant")[i % 2], time=5.0 + i, event=float(i % 2))
        for i, c in enumerate(cases)
    ]
    config = malignancy_config()
    dataset = FinetuneDataset(labeled, processor, config, "classification", patches_per_epoch=6)
    example = dataset[1]
    assert example["labels"] == {"malignancy": 1}
    assert example["lesion_mask"].shape == (1, 16, 16, 16) and example["lesion_mask"].max() == 1.0
    centred = dataset.evaluation_example(0)["lesion_mask"][0]
    assert centred.sum() == 4 * 6 * 6  # the whole lesion is inside the patch centred on it
    batch = collate_examples([dataset[i] for i in range(3)])
    assert batch["labels"]["malignancy"].tolist() == [0, 1, 0] and batch["lesion_mask"].shape == (3, 1, 16, 16, 16)

    survival = FinetuneDataset(labeled, processor, config, "survival")
    batch = collate_examples([survival[i] for i in range(3)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [[5, 0], [6, 1], [7, 0]]

    no_masks = [LabeledCase(image=c.image, label=c.label) for c in labeled]
    assert "lesion_mask" not in FinetuneDataset(no_masks, processor, config, "classification")[0]


@pytest.mark.parametrize(
    ("task", "change", "message"),
    [
        (
            "classification",
            {"label": "borderline"},
            r"row 3, column 'label': unknown class 'borderline'; task 'malignancy' has classes \['benign', 'malig",
        ),
        ("classification", {"label": None}, "classification needs a label for every case"),
        ("survival", {"time": None, "event": None}, "survival needs a time and an event"),
        ("segmentation", {"mask": None}, "segmentation needs a mask for every case"),
        ("classification", {"mask": None}, "some cases have one, so all need one"),
    ],
)
def test_dataset_errors(folder, processor, task, change, message):
    config = malignancy_config()
    cases = [
        LabeledCase(image=c.image, mask=c.mask, label="benign", time=1.0, event=1.0, source=f"cases.csv: row {i + 2}")
        for i, c in enumerate(find_labeled_cases(folder))
    ]
    cases[1] = LabeledCase(**{**cases[1].__dict__, **change})
    with pytest.raises(LabeledDataError, match=message):
        FinetuneDataset(cases, processor, config, task)


def test_empty_set_and_unknown_task(processor, config):
    with pytest.raises(LabeledDataError, match="no cases for segmentation"):
        FinetuneDataset([], processor, config, "segmentation")
    with pytest.raises(LabeledDataError, match="unknown task 'detection'"):
        FinetuneDataset([], processor, config, "detection")
