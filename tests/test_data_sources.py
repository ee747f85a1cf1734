"""Readers: every dataset layout becomes the same LesionDataset."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermalens.classes import CLASS_CODES, ISIC2018_COLUMNS, class_index
from dermalens.data.readers import (
    READERS,
    RECORD_COLUMNS,
    DataFormatError,
    DatasetUnavailable,
    LesionDataset,
    UnreadableImageError,
    download_dermamnist,
    make_synthetic_dataset,
    open_dataset,
    read_class_folders,
    read_dermamnist,
    read_ham10000,
    read_ham10000_metadata,
    read_isic2018,
)

pytestmark = pytest.mark.unit
HAM10000_CLASS_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}


# --------------------------------------------------------------------------- DermaMNIST


@pytest.fixture(scope="module")
def dermamnist(shared_data: Path) -> LesionDataset:
    return read_dermamnist(shared_data / "dermamnist.npz")


def test_dermamnist_has_the_official_splits(dermamnist):
    assert list(dermamnist.records.columns) == list(RECORD_COLUMNS)
    assert dermamnist.records["official_split"].value_counts().to_dict() == {"train": 7007, "val": 1003, "test": 2005}
    assert dermamnist.images.shape == (10015, 28, 28, 3) and dermamnist.images.dtype == np.uint8
    assert set(dermamnist.records["label"]) == set(range(7))
    assert dermamnist.class_counts() == HAM10000_CLASS_COUNTS
    assert dermamnist.issues == []


def test_dermamnist_records_point_at_their_own_images(dermamnist, shared_data):
    records = dermamnist.records
    assert records["image_id"].iloc[0] == "dermamnist_train_00000"
    assert records["image_id"].is_unique
    assert (records["lesion_id"] == records["image_id"]).all()  # DermaMNIST has no lesion ids
    assert records["path"].isna().all()
    with np.load(shared_data / "dermamnist.npz") as raw:
        first_val = int(np.flatnonzero(records["image_id"] == "dermamnist_val_00000")[0])
        np.testing.assert_array_equal(dermamnist.load_image(first_val), raw["val_images"][0])
        assert records["label"].iloc[first_val] == int(raw["val_labels"][0, 0])


def test_dermamnist_load_image_returns_a_copy(dermamnist):
    image = dermamnist.load_image(0)
    image[:] = 0
    assert dermamnist.images[dermamnist.records["array_index"].iloc[0]].any()


def test_dermamnist_reads_from_a_directory(shared_data):
    dataset = read_dermamnist(shared_data)
    assert len(dataset) == 10015


def _write_npz(path: Path, labels=(0, 1, 2), **overrides) -> Path:
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.zeros((len(labels), 28, 28, 3), np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, np.uint8).reshape(-1, 1)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_dermamnist_labels_out_of_range_are_issues(tmp_path):
    dataset = read_dermamnist(_write_npz(tmp_path / "d.npz", labels=(0, 9, 6)))
    assert len(dataset) == 6
    assert [(i.kind, i.image_id) for i in dataset.issues] == [
        ("unknown_label", f"dermamnist_{s}_00001") for s in ("train", "val", "test")
    ]
    # Array rows of the remaining records still point at the right images.
    assert dataset.records["array_index"].tolist() == [0, 2, 3, 5, 6, 8]


def test_dermamnist_missing_keys_raise_naming_file_and_keys(tmp_path):
    path = _write_npz(tmp_path / "broken.npz", val_labels=None)
    with pytest.raises(DataFormatError, match=r"broken\.npz.*val_labels"):
        read_dermamnist(path)
    with pytest.raises(DataFormatError, match="not found"):
        read_dermamnist(tmp_path / "absent.npz")


def test_a_damaged_dermamnist_member_is_named_not_a_traceback(tmp_path):
    """np.load reads members lazily: a flipped byte inside a compressed member raised zipfile.BadZipFile
    (a traceback) where a truncated file was already named."""
    rng = np.random.default_rng(0)
    arrays = {f"{split}_{kind}": (rng.integers(0, 256, (60, 28, 28, 3), dtype=np.uint8) if kind == "images"
                                  else np.zeros((60, 1), np.uint8))
              for split in ("train", "val", "test") for kind in ("images", "labels")}
    path = tmp_path / "damaged.npz"
    np.savez_compressed(path, **arrays)
    data = bytearray(path.read_bytes())
    middle = len(data) // 6                      # inside train_images, the first member
    data[middle:middle + 50] = bytes(255 - b for b in data[middle:middle + 50])
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"damaged\.npz is damaged: its train_images cannot be read"):
        read_dermamnist(path)


def test_download_dermamnist_offline_raises_quickly(tmp_path):
    started = time.monotonic()
    with pytest.raises(DatasetUnavailable, match="127.0.0.1:9"):
        download_dermamnist(tmp_path, timeout=3, url="http://127.0.0.1:9/x.npz")
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_dermamnist_checks_the_md5(tmp_path):
    """A loopback server hands out a real .npz: kept with the right MD5, refused (and nothing left) with a wrong one."""
    import hashlib
    import http.server
    import threading

    (tmp_path / "served").mkdir()
    served = _write_npz(tmp_path / "served" / "dermamnist_64.npz")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dermamnist_64.npz"
    try:
        with pytest.raises(DatasetUnavailable, match="MD5"):
            download_dermamnist(tmp_path / "bad", url=url, size=64, md5="0" * 32)
        assert list((tmp_path / "bad").iterdir()) == []
        good = hashlib.md5(served.read_bytes()).hexdigest()
        path = download_dermamnist(tmp_path / "good", url=url, size=64, md5=good)
        assert path.name == "dermamnist_64.npz" and path.read_bytes() == served.read_bytes()
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="sizes 28, 64, 128, 224"):
        download_dermamnist(tmp_path, size=96)


def test_download_dermamnist_keeps_an_existing_file(tmp_path):
    existing = _write_npz(tmp_path / "dermamnist.npz")
    assert download_dermamnist(tmp_path, url="http://127.0.0.1:9/x.npz") == existing


# --------------------------------------------------------------------------- HAM10000


def test_real_metadata_class_and_lesion_counts(shared_data):
    records, issues = read_ham10000_metadata(shared_data / "HAM10000_metadata.csv")
    assert len(records) == 10015 and issues == []
    counts = records["label"].map(lambda i: CLASS_CODES[i]).value_counts().to_dict()
    assert counts == HAM10000_CLASS_COUNTS
    assert records["lesion_id"].nunique() == 7470


def test_real_ham10000_root_reports_the_images_it_lacks(shared_data):
    dataset = read_ham10000(shared_data)
    assert len(dataset) == 50
    missing = [i for i in dataset.issues if i.kind == "missing_file"]
    assert len(missing) == 9965 and len(dataset.issues) == 9965
    assert set(dataset.records["image_id"]).isdisjoint(i.image_id for i in missing)
    assert "ISIC_" in missing[0].image_id and missing[0].image_id in missing[0].detail


def test_real_ham10000_restricted_to_available_images(shared_data):
    dataset = read_ham10000(shared_data, restrict_to_available=True)
    assert len(dataset) == 50 and dataset.issues == []
    assert {k: v for k, v in dataset.class_counts().items() if v} == {"nv": 45, "mel": 4, "bcc": 1}
    # Segmentation masks share the folder but are not images of the dataset.
    assert not dataset.records["path"].str.contains("_segmentation").any()


def test_mini_ham10000_layout(mini_ham10000):
    dataset = read_ham10000(mini_ham10000)
    assert dataset.name == "ham10000" and len(dataset) == 50 and dataset.issues == []
    assert {k: v for k, v in dataset.class_counts().items() if v} == {"nv": 45, "mel": 4, "bcc": 1}
    assert all(Path(p).parent.name == "HAM10000_images_part_1" for p in dataset.records["path"])
    image = dataset.load_image(0)
    assert image.shape == (450, 600, 3) and image.dtype == np.uint8


def test_ham10000_explicit_image_dirs_and_metadata(mini_ham10000, tmp_path):
    moved = tmp_path / "elsewhere.csv"
    (mini_ham10000 / "HAM10000_metadata.csv").rename(moved)
    dataset = read_ham10000(mini_ham10000, metadata_csv=moved, image_dirs=[mini_ham10000 / "HAM10000_images_part_1"])
    assert len(dataset) == 50
    with pytest.raises(DataFormatError, match="HAM10000_metadata.csv"):
        read_ham10000(mini_ham10000)


def test_ham10000_missing_columns_raise_naming_them(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text("image_id,diagnosis\nISIC_1,nv\n")
    with pytest.raises(DataFormatError, match=r"HAM10000_metadata\.csv.*lesion_id, dx"):
        read_ham10000(tmp_path)
    with pytest.raises(DataFormatError, match="not found"):
        read_ham10000(tmp_path / "nowhere")


@pytest.mark.parametrize("encoding, separator", [
    ("utf-8-sig", ","),    # "CSV UTF-8" from Excel: a byte-order mark first
    ("utf-16", ","),       # UTF-16 with its byte-order mark
    ("utf-16-le", ","),    # UTF-16 without one
    ("utf-16", "\t"),      # Excel's "Unicode Text": UTF-16, tab-separated
    ("utf-8", ";"),        # Excel where the decimal mark is a comma
])
def test_metadata_csv_in_other_encodings_is_read(mini_ham10000, encoding, separator):
    metadata = mini_ham10000 / "HAM10000_metadata.csv"
    table = pd.read_csv(metadata)
    table.loc[0, "localization"] = "Rücken"                    # one non-ASCII cell
    metadata.write_bytes(table.to_csv(index=False, sep=separator).encode(encoding))
    dataset = read_ham10000(mini_ham10000)
    assert len(dataset) == 50 and dataset.issues == []
    assert {k: v for k, v in dataset.class_counts().items() if v} == {"nv": 45, "mel": 4, "bcc": 1}


def test_csv_files_that_cannot_be_read_are_refused_by_name(tmp_path):
    (tmp_path / "mel").mkdir()
    legacy = tmp_path / "lesion_ids.csv"
    legacy.write_bytes("image_id,lesion_id\nISIC_1,HAM_1\nISIC_2,HAM_\xe9\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"lesion-id CSV .*lesion_ids\.csv is not UTF-8 text: byte 0xe9 on "
                                              r"line 3 .*save it as 'CSV UTF-8'"):
        read_class_folders(tmp_path, lesion_csv=legacy)
    workbook = tmp_path / "metadata.csv"
    workbook.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataFormatError, match=r"metadata\.csv is a zip file \(an Excel \.xlsx workbook\?\), not a CSV"):
        read_ham10000(tmp_path, metadata_csv=workbook)


def test_load_image_error_names_the_file(mini_ham10000, tmp_path):
    dataset = read_ham10000(mini_ham10000)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    dataset.records.loc[0, "path"] = str(broken)
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        dataset.load_image(0)
    dataset.records.loc[1, "path"] = str(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        dataset.load_image(1)


def test_subset_reindexes_and_shares_images(dermamnist, mini_ham10000):
    part = dermamnist.subset([10, 3, 7])
    assert part.records.index.tolist() == [0, 1, 2]
    assert part.records["image_id"].tolist() == dermamnist.records["image_id"].iloc[[10, 3, 7]].tolist()
    assert part.images is dermamnist.images
    np.testing.assert_array_equal(part.load_image(1), dermamnist.load_image(3))
    ham = read_ham10000(mini_ham10000)
    mask = (ham.records["label"] == class_index("mel")).to_numpy()
    assert len(ham.subset(mask)) == 4


# --------------------------------------------------------------------------- ISIC 2018


def _build_isic2018(root: Path, sample_dir: Path, sample_metadata: pd.DataFrame, split: str = "Training",
                    groupings: bool = True, gt_in_subfolder: bool = False) -> pd.DataFrame:
    rows = sample_metadata.head(12)
    input_dir = root / f"ISIC2018_Task3_{split}_Input"
    input_dir.mkdir(parents=True)
    for image_id in rows["image_id"]:
        (input_dir / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    one_hot = pd.DataFrame({"image": rows["image_id"]})
    for column in ISIC2018_COLUMNS:
        one_hot[column] = (rows["dx"].str.upper() == column).astype(float)
    gt_dir = root / f"ISIC2018_Task3_{split}_GroundTruth" if gt_in_subfolder else root
    gt_dir.mkdir(exist_ok=True)
    one_hot.to_csv(gt_dir / f"ISIC2018_Task3_{split}_GroundTruth.csv", index=False)
    if groupings:
        pd.DataFrame({"image": rows["image_id"], "lesion_id": rows["lesion_id"]}).to_csv(
            root / f"ISIC2018_Task3_{split}_LesionGroupings.csv", index=False
        )
    return rows


def test_isic2018_reader_maps_one_hot_columns_to_labels(tmp_path, sample_dir, sample_metadata):
    expected = _build_isic2018(tmp_path, sample_dir, sample_metadata)
    dataset = read_isic2018(tmp_path)
    assert dataset.name == "isic2018" and len(dataset) == 12 and dataset.issues == []
    assert dataset.records["label"].tolist() == [class_index(dx) for dx in expected["dx"]]
    assert dataset.records["lesion_id"].tolist() == expected["lesion_id"].tolist()
    assert set(dataset.records["official_split"]) == {"train"}
    assert dataset.load_image(0).shape == (450, 600, 3)


def test_isic2018_rows_that_are_not_one_hot_are_issues(tmp_path, sample_dir, sample_metadata):
    rows = _build_isic2018(tmp_path, sample_dir, sample_metadata)
    gt_path = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt = pd.read_csv(gt_path)
    gt.loc[0, ISIC2018_COLUMNS] = 0.0  # no class
    gt.loc[1, ["MEL", "NV"]] = 1.0  # two classes
    gt.to_csv(gt_path, index=False)
    (tmp_path / "ISIC2018_Task3_Training_Input" / f"{rows['image_id'][2]}.jpg").unlink()
    # An image the CSV does not list was left out silently.
    (tmp_path / "ISIC2018_Task3_Training_Input" / "ISIC_9999999.jpg").symlink_to(
        sample_dir / f"{rows['image_id'][3]}.jpg")
    dataset = read_isic2018(tmp_path)
    assert len(dataset) == 9
    assert [(i.kind, i.image_id) for i in dataset.issues] == [
        ("unknown_label", rows["image_id"][0]), ("unknown_label", rows["image_id"][1]),
        ("missing_file", rows["image_id"][2]), ("unlabelled_image", "ISIC_9999999"),
    ]
    # The values named by column (the file's order is not the label order).
    assert "MEL=1.0" in dataset.issues[1].detail and "NV=1.0" in dataset.issues[1].detail
    assert "has no row in ISIC2018_Task3_Training_GroundTruth.csv" in dataset.issues[3].detail


def test_isic2018_without_groupings_warns_and_uses_image_ids(tmp_path, sample_dir, sample_metadata):
    _build_isic2018(tmp_path, sample_dir, sample_metadata, split="Validation", groupings=False,
                    gt_in_subfolder=True)
    with pytest.warns(UserWarning, match="grouping by lesion is impossible"):
        dataset = read_isic2018(tmp_path, split="val")
    assert (dataset.records["lesion_id"] == dataset.records["image_id"]).all()
    assert set(dataset.records["official_split"]) == {"val"}
    with pytest.raises(DataFormatError, match="Training_GroundTruth"):
        read_isic2018(tmp_path, split="Training")


def test_isic2018_missing_class_column_raises(tmp_path, sample_dir, sample_metadata):
    _build_isic2018(tmp_path, sample_dir, sample_metadata)
    gt_path = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    pd.read_csv(gt_path).drop(columns=["VASC"]).to_csv(gt_path, index=False)
    with pytest.raises(DataFormatError, match="VASC"):
        read_isic2018(tmp_path)


# --------------------------------------------------------------------------- class folders


def test_class_folders_reader(tmp_path, sample_dir, sample_metadata):
    for code in ("nv", "MEL", "melanomaish"):
        (tmp_path / code).mkdir()
    ids = sample_metadata["image_id"].tolist()
    for image_id in ids[:3]:
        (tmp_path / "nv" / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    (tmp_path / "MEL" / f"{ids[3]}.jpg").symlink_to(sample_dir / f"{ids[3]}.jpg")
    # Same id in a later folder (folders are read in sorted order: MEL before nv).
    (tmp_path / "nv" / f"{ids[3]}.png").symlink_to(sample_dir / f"{ids[3]}_segmentation.png")
    (tmp_path / "melanomaish" / f"{ids[4]}.jpg").symlink_to(sample_dir / f"{ids[4]}.jpg")
    (tmp_path / "empty_dir").mkdir()

    dataset = read_class_folders(tmp_path)
    assert dataset.name == "folder" and len(dataset) == 4
    # The class set comes from the folders (HAM10000 order), and labels index it.
    assert dataset.classes == ("mel", "nv")
    assert sorted(dataset.records["label"].tolist()) == [0, 1, 1, 1]
    assert dataset.class_counts() == {"mel": 1, "nv": 3}
    assert (dataset.records["lesion_id"] == dataset.records["image_id"]).all()
    # A folder that is not a class is one issue for the folder, not one per file.
    assert sorted((i.kind, Path(i.path).name) for i in dataset.issues if i.kind != "duplicate_id") == [
        ("unknown_label", "empty_dir"), ("unknown_label", "melanomaish")]
    assert [i.image_id for i in dataset.issues if i.kind == "duplicate_id"] == [ids[3]]
    unknown = next(i for i in dataset.issues if i.path.endswith("melanomaish"))
    assert "folder 'melanomaish' (1 images) is not a class: did you mean 'mel'?" in unknown.detail
    assert "data.classes" in unknown.detail


def test_class_folders_with_classes_of_ones_own(tmp_path, sample_dir, sample_metadata):
    ids = sample_metadata["image_id"].tolist()
    for folder, chunk in (("benign", ids[:3]), ("Malignant", ids[3:5]), ("malignnt", ids[5:6])):
        (tmp_path / folder).mkdir()
        for image_id in chunk:
            (tmp_path / folder / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    (tmp_path / "lesions.csv").write_text(f"image_id,lesion_id\n{ids[0]},L1\n{ids[1]},L1\n")

    dataset = read_class_folders(tmp_path, classes=["malignant", "benign"], lesion_csv=tmp_path / "lesions.csv")
    assert dataset.classes == ("malignant", "benign")   # the order given, not alphabetical
    assert dataset.class_counts() == {"malignant": 2, "benign": 3}
    lesions = dict(zip(dataset.records["image_id"], dataset.records["lesion_id"]))
    assert lesions[ids[0]] == lesions[ids[1]] == "L1" and lesions[ids[2]] == ids[2]
    (typo,) = dataset.issues
    assert "folder 'malignnt' (1 images) is not a class: did you mean 'malignant'?" in typo.detail
    # Without data.classes those names are not classes, and nothing is read.
    assert len(read_class_folders(tmp_path)) == 0


def test_a_dataset_relabelled_by_a_models_classes(tmp_path, sample_dir, sample_metadata):
    ids = sample_metadata["image_id"].tolist()
    for folder, chunk in (("nv", ids[:3]), ("df", ids[3:4]), ("mel", ids[4:6])):
        (tmp_path / folder).mkdir()
        for image_id in chunk:
            (tmp_path / folder / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    dataset = read_class_folders(tmp_path)
    assert dataset.classes == ("df", "mel", "nv")
    relabelled = dataset.with_classes(CLASS_CODES)       # a 7-class model: every image keeps its class
    assert relabelled.class_counts() == {**{c: 0 for c in CLASS_CODES}, "nv": 3, "df": 1, "mel": 2}
    two_class = dataset.with_classes(("nv", "mel"))      # a model without df: its image cannot be scored
    assert two_class.class_counts() == {"nv": 3, "mel": 2}
    assert [(i.kind, i.image_id) for i in two_class.issues] == [("unknown_label", ids[3])]
    assert "class 'df' is not one of the classes nv, mel" in two_class.issues[0].detail


def test_class_folders_without_subfolders_raise(tmp_path):
    with pytest.raises(DataFormatError, match="no subfolders"):
        read_class_folders(tmp_path)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_dataset_is_marked_and_shaped():
    dataset = make_synthetic_dataset(n_per_class=12, size=32, seed=1)
    assert dataset.is_synthetic and dataset.name == "synthetic"
    assert dataset.images.shape == (84, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.class_counts() == {code: 12 for code in CLASS_CODES}
    assert dataset.records["lesion_id"].value_counts().eq(3).all()
    np.testing.assert_array_equal(make_synthetic_dataset(12, 32, seed=1).images, dataset.images)
    assert not np.array_equal(make_synthetic_dataset(12, 32, seed=2).images, dataset.images)


def _lesion_colour_features(images: np.ndarray) -> np.ndarray:
    """Colour histogram of the pixels that differ from the skin (border), plus lesion area."""
    features = []
    for image in images.astype(float):
        skin = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), axis=0)
        pixels = image.reshape(-1, 3)
        lesion = pixels[np.linalg.norm(pixels - skin, axis=1) > 40]
        bins = (lesion // 64).astype(int)
        histogram = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64)
        features.append(np.r_[np.sqrt(histogram / max(len(lesion), 1)), len(lesion) / len(pixels)])
    return np.array(features)


def test_synthetic_classes_are_learnable():
    from sklearn.linear_model import LogisticRegression

    dataset = make_synthetic_dataset(n_per_class=30, size=32, seed=0)
    features = _lesion_colour_features(dataset.images)
    labels = dataset.records["label"].to_numpy()
    # Hold out whole lesions, as a real evaluation would.
    held_out = dataset.records["lesion_id"].str.endswith(("0000", "0001")).to_numpy()
    model = LogisticRegression(max_iter=5000).fit(features[~held_out], labels[~held_out])
    assert model.score(features[held_out], labels[held_out]) > 0.9


# --------------------------------------------------------------------------- auto-detection


def test_open_dataset_detects_each_layout(tmp_path, shared_data, mini_ham10000, sample_dir, sample_metadata):
    assert open_dataset(shared_data / "dermamnist.npz").name == "dermamnist"
    assert open_dataset(shared_data).name == "dermamnist"  # dermamnist.npz wins over the partial HAM10000
    assert open_dataset(shared_data, fmt="ham10000", restrict_to_available=True).name == "ham10000"
    assert open_dataset(mini_ham10000).name == "ham10000"

    isic = tmp_path / "isic"
    _build_isic2018(isic, sample_dir, sample_metadata, split="Validation")
    detected = open_dataset(isic)
    assert detected.name == "isic2018" and set(detected.records["official_split"]) == {"val"}
    with pytest.raises(DataFormatError, match="Training_GroundTruth"):
        open_dataset(isic, split="Training")  # a set named by the caller wins over the one found

    folders = tmp_path / "folders"
    (folders / "bcc").mkdir(parents=True)
    image_id = sample_metadata["image_id"][0]
    (folders / "bcc" / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    assert open_dataset(folders).name == "folder"

    synthetic = open_dataset(None, fmt="synthetic", n_per_class=3, size=16)
    assert synthetic.is_synthetic and len(synthetic) == 21


def test_open_dataset_explains_what_it_looked_for(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DataFormatError, match=r"HAM10000_metadata\.csv.*GroundTruth.*akiec"):
        open_dataset(tmp_path)
    with pytest.raises(ValueError, match="'parquet'"):
        open_dataset(tmp_path, fmt="parquet")


def test_open_dataset_auto_drops_options_that_do_not_apply(shared_data):
    # The same call works whatever the folder turns out to hold.
    dataset = open_dataset(shared_data, restrict_to_available=True)
    assert dataset.name == "dermamnist"
    with pytest.raises(TypeError, match="restrict_to_avialable"):
        open_dataset(shared_data, restrict_to_avialable=True)


def test_open_dataset_named_format_refuses_options_its_reader_does_not_take(shared_data):
    with pytest.raises(TypeError, match=r"dermamnist reader does not take restrict_to_available"):
        open_dataset(shared_data, fmt="dermamnist", restrict_to_available=True)
    with pytest.raises(TypeError, match=r"synthetic reader does not take split \(it takes: n_per_class, size, seed\)"):
        open_dataset(None, fmt="synthetic", split="val")


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_every_reader_option_is_an_open_dataset_keyword(fmt):
    """What a reader declares, its read function takes and `open_dataset` can pass on by name."""
    import inspect

    reader = READERS[fmt]
    read_parameters = inspect.signature(reader.read).parameters
    open_keywords = {name for name, p in inspect.signature(open_dataset).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(reader.options) <= set(read_parameters) and set(reader.options) <= open_keywords
    assert (reader.detect is None) == (reader.looks_for == "")


def test_every_open_dataset_keyword_is_taken_by_some_reader():
    import inspect

    open_keywords = {name for name, p in inspect.signature(open_dataset).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert open_keywords == {option for reader in READERS.values() for option in reader.options}


def test_the_isic2018_set_to_read_is_the_one_named_whatever_the_format_setting(tmp_path, sample_dir, sample_metadata):
    """data.subset was passed only with data.format=isic2018 (with auto, the default, the first set was read
    silently), and a named isic2018 format could not read a folder holding only the Test set."""
    from dermalens.config import load_config
    from dermalens.data.prepare import load_dataset

    both = tmp_path / "both"
    _build_isic2018(both, sample_dir, sample_metadata, split="Training")
    _build_isic2018(both, sample_dir, sample_metadata, split="Test")
    for fmt in ("auto", "isic2018"):
        config = load_config(None, ["data.subset=Test"], {"data": {"path": str(both), "format": fmt}})
        assert set(load_dataset(config).records["official_split"]) == {"test"}, fmt
    only_test = tmp_path / "only_test"
    _build_isic2018(only_test, sample_dir, sample_metadata, split="Test")
    assert set(open_dataset(only_test, fmt="isic2018").records["official_split"]) == {"test"}


def test_one_isic2018_set_is_split_as_drawn_and_said_so(tmp_path, sample_dir, sample_metadata):
    """Every record of one ISIC 2018 set carries the same official split, so a split drawn now was reported
    as "official splits", and the warning that a set without lesion groupings is split per image was skipped."""
    import warnings

    from dermalens.config import load_config
    from dermalens.data.prepare import prepare_data
    from dermalens.evaluation.evaluate import split_method

    _build_isic2018(tmp_path / "isic", sample_dir, sample_metadata, groupings=False)
    config = load_config(None, ["data.cache_dir=null", "model.image_size=32", "data.test_fraction=0.25",
                                "data.val_fraction=0.25"], {"data": {"path": str(tmp_path / "isic")}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_data(config, progress=False)
    assert prepared.split_source == "drawn now (seed 0)"
    assert any("the split is per image" in str(w.message) for w in caught)
    assert split_method(prepared, "test").startswith("split per image (no lesion ids)")


def test_a_lesion_id_csv_giving_one_image_two_lesions_is_refused_by_line(tmp_path):
    """The last row won silently, so which lesion (and split) the image joined was the order of the rows."""
    (tmp_path / "nv").mkdir()
    lesions = tmp_path / "lesion_ids.csv"
    lesions.write_text("image_id,lesion_id\nnv0,L1\nnv1,L2\nnv0,L1\nnv0,L2\n")
    with pytest.raises(DataFormatError, match=r"lesion_ids\.csv gives 1 image\(s\) two lesion ids: nv0 "
                                              r"\(again on line 5\)"):
        read_class_folders(tmp_path, lesion_csv=lesions)


def test_a_setting_another_formats_reader_reads_is_refused_not_dropped(tmp_path, sample_dir, mini_ham10000):
    """data.lesion_ids for HAM10000 data (whose lesion ids come from its metadata) was dropped without a word,
    and a lesion-id CSV named by its folder was "not found"."""
    from dermalens.config import ConfigError, load_config
    from dermalens.data.prepare import load_dataset

    ham = mini_ham10000
    csv = tmp_path / "lesions.csv"
    csv.write_text("image_id,lesion_id\n")
    for fmt in ("auto", "ham10000"):
        config = load_config(None, [f"data.lesion_ids={csv}"], {"data": {"path": str(ham), "format": fmt}})
        with pytest.raises(ConfigError, match=r"data\.lesion_ids=.*lesions\.csv is read for folder data only, "
                                              r"and .*ham is read as ham10000 data"):
            load_dataset(config)
    config = load_config(None, ["data.subset=Test"], {"data": {"path": str(ham)}})
    with pytest.raises(ConfigError, match=r"data\.subset=Test is read for isic2018 data only"):
        load_dataset(config)
    assert len(load_dataset(load_config(None, [], {"data": {"path": str(ham)}})))   # the same data, read

    folders = tmp_path / "folders"
    (folders / "nv").mkdir(parents=True)
    (folders / "nv" / "nv0.jpg").symlink_to(sorted(sample_dir.glob("ISIC_*.jpg"))[0])
    config = load_config(None, [f"data.lesion_ids={tmp_path}"], {"data": {"path": str(folders)}})
    with pytest.raises(DataFormatError, match=rf"lesion-id CSV {tmp_path} is a folder; name the file itself"):
        load_dataset(config)


def test_an_official_isic2018_set_scored_whole_is_named_in_the_report(tmp_path, sample_dir, sample_metadata):
    """Scored whole, the Test set and the Training set were both "every image of the data set (no split)"."""
    from dermalens.config import load_config
    from dermalens.data.prepare import prepare_data
    from dermalens.evaluation.evaluate import split_method

    _build_isic2018(tmp_path / "isic", sample_dir, sample_metadata, split="Test")
    config = load_config(None, ["data.cache_dir=null", "model.image_size=32"],
                         {"data": {"path": str(tmp_path / "isic"), "format": "isic2018"}})
    prepared = prepare_data(config, progress=False, split_needed=False)
    assert split_method(prepared, "all") == "every image of the official ISIC 2018 Test set (no split)"
    # A run trained on one ISIC 2018 set, scored whole on its own data: optimistic, whatever the set.
    assert split_method(prepared, "all", own_run=True).endswith("its training images included (optimistic figures)")


@pytest.mark.parametrize("content", [b"", b"label,image\n0,a.png\n"], ids=["empty", "text"])
def test_a_dermamnist_file_that_is_no_archive_is_named_not_a_traceback(tmp_path, content):
    """np.load raised EOFError (a traceback) for an empty file and called a text file "pickled" data."""
    path = tmp_path / "dermamnist.npz"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=r"dermamnist\.npz is not a complete \.npz archive"):
        read_dermamnist(path)


def test_evaluating_an_isic2018_folder_names_the_set_and_never_a_run_folder(tmp_path, sample_dir, sample_metadata,
                                                                             serving_checkpoint):
    """A folder with the Training and Test sets was scored as its Training set (HAM10000, which the recipes train
    on) under `--split all`, "every image"; two clinics' ISIC-layout folders shared eval-Test-test/; and --out
    could replace a run's own test report."""
    import warnings

    from dermalens.config import ConfigError
    from dermalens.evaluation.targets import resolve_target

    both, clinic_a, clinic_b = tmp_path / "both", tmp_path / "clinic_a", tmp_path / "clinic_b"
    _build_isic2018(both, sample_dir, sample_metadata, split="Training")
    _build_isic2018(both, sample_dir, sample_metadata, split="Test")
    with pytest.raises(ConfigError, match=r"holds the ISIC 2018 sets Training, Test: give --split test"):
        resolve_target(checkpoint=serving_checkpoint, data=str(both))
    with pytest.warns(UserWarning, match="Training set is HAM10000"):
        training = resolve_target(checkpoint=serving_checkpoint, data=str(both), split="train")
    assert training.config["data"]["subset"] == "Training" and training.out_dir.name == "eval-both-Training"
    for clinic in (clinic_a, clinic_b):
        _build_isic2018(clinic, sample_dir, sample_metadata, split="Test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # one set in the folder: scored whole, no slice, no warning
        targets = [resolve_target(checkpoint=serving_checkpoint, data=str(clinic)) for clinic in (clinic_a, clinic_b)]
    assert [(t.config["data"]["subset"], t.split) for t in targets] == [("Test", "all")] * 2
    assert [t.out_dir.name for t in targets] == ["eval-clinic_a-Test", "eval-clinic_b-Test"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: run\n")
    with pytest.raises(ConfigError, match=r"is a run folder: its metrics.json, report.md and predictions.csv"):
        resolve_target(checkpoint=serving_checkpoint, data=str(clinic_a), out=run)


def test_an_isic2018_submission_says_when_its_argmax_is_not_the_models_decision(tmp_path, sample_dir,
                                                                                 serving_checkpoint):
    """The ISIC scorer takes each row's argmax; the file holds the calibrated probabilities, so where the model's
    fitted rule decides another class the submission is scored on the raw argmax: said, with how many."""
    import shutil

    from dermalens.inference.batch_predict import predict_images
    from dermalens.inference.postprocess import DecisionRule
    from dermalens.models.calibration_record import write_calibration

    checkpoint = shutil.copy(serving_checkpoint, tmp_path / "model.ckpt")
    photos = [str(path) for path in sorted(sample_dir.glob("ISIC_*.jpg"))[:3]]
    plain = predict_images(checkpoint, photos, output_format="isic2018", runtime="pytorch")
    assert not any("isic2018" in note for note in plain.notes)   # no rule: the argmax is the decision
    rule = DecisionRule(tuple(CLASS_CODES), {"vasc": 50.0}, objective="balanced", fitted_on="val")
    write_calibration(checkpoint, temperature=1.0, tta=False, n_images=10, decision=rule.to_dict())
    ruled = predict_images(checkpoint, photos, output_format="isic2018", runtime="pytorch")
    assert ruled.text == plain.text                              # the same probabilities are written
    [note] = [note for note in ruled.notes if "isic2018" in note]
    assert "for 3 of 3 images that is not the class the model's decision rule reports" in note


def test_a_runs_own_splits_of_one_isic2018_set_are_evaluated_into_their_own_folders(tmp_path, sample_dir,
                                                                                     sample_metadata):
    """Naming official sets by their folder made `--split val` and `--split test` of a run trained on one
    ISIC 2018 set share one output folder (each overwrote the other)."""
    from dermalens.config import dump_config, load_config
    from dermalens.evaluation.targets import resolve_target

    _build_isic2018(tmp_path / "isic", sample_dir, sample_metadata)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    config = load_config(None, ["data.subset=Training"], {"data": {"path": str(tmp_path / "isic")}})
    (run / "config.yaml").write_text(dump_config(config))
    (run / "split.csv").write_text("image_id,lesion_id,split\n")
    folders = {split: resolve_target(run=run, split=split, redraw_split=True).out_dir.name for split in ("val", "test")}
    assert folders == {"val": "eval-Training-val", "test": "eval-Training-test"}
    # Other data: the run's set says nothing of it (it read the Training set of another folder holding two,
    # and two clinics' folders shared eval-Training-val/).
    from dermalens.config import ConfigError

    both = tmp_path / "both"
    _build_isic2018(both, sample_dir, sample_metadata, split="Training")
    _build_isic2018(both, sample_dir, sample_metadata, split="Test")
    with pytest.raises(ConfigError, match="holds the ISIC 2018 sets Training, Test"):
        resolve_target(run=run, data=str(both))
    clinic = tmp_path / "clinic_c"
    _build_isic2018(clinic, sample_dir, sample_metadata, split="Test")
    assert resolve_target(run=run, data=str(clinic)).out_dir.name == "eval-clinic_c-Test"


def test_a_run_given_its_own_data_with_data_scores_its_test_split_not_its_training_images(tmp_path, sample_dir,
                                                                                          sample_metadata):
    """`evaluate --run RUN --data <the folder RUN trained on>` scored the whole folder, training images included,
    without a word: the same data named again is still the run's own. A run on one ISIC 2018 set is not
    affected: the folder's official Test set is other data, scored whole."""
    from dermalens.config import dump_config, load_config
    from dermalens.evaluation.targets import resolve_target

    data = tmp_path / "lesions"
    for _, row in sample_metadata.head(12).iterrows():
        (data / row["dx"]).mkdir(parents=True, exist_ok=True)
        (data / row["dx"] / f"{row['image_id']}.jpg").symlink_to(sample_dir / f"{row['image_id']}.jpg")

    def run_on(config) -> Path:
        run = tmp_path / f"run-{config['data']['format']}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.ckpt").write_bytes(b"")
        (run / "config.yaml").write_text(dump_config(config))
        (run / "split.csv").write_text("image_id,lesion_id,split\n")
        return run

    run = run_on(load_config(None, ["data.format=folder"], {"data": {"path": str(data)}}))
    (tmp_path / "elsewhere").mkdir()
    for named, data_format in ((data, None), (tmp_path / "elsewhere" / ".." / "lesions", "folder")):
        target = resolve_target(run=run, data=str(named), data_format=data_format)
        assert (target.split, target.split_dir) == ("test", run)
        assert target.out_dir == run / "eval-lesions-test"
    other = tmp_path / "other"
    shutil.copytree(data, other, symlinks=True)
    assert resolve_target(run=run, data=str(other)).split_dir is None   # another folder: scored whole
    # The run's lesion-id CSV belongs to its own data: other data is read without it (it would be refused, or
    # give the other folder's images lesions of the run's data), the run's own data with it.
    lesion_csv = tmp_path / "lesions.csv"
    lesion_csv.write_text("image_id,lesion_id\n")
    (run / "config.yaml").write_text(dump_config(load_config(
        None, ["data.format=folder", f"data.lesion_ids={lesion_csv}"], {"data": {"path": str(data)}})))
    assert resolve_target(run=run, data=str(other)).config["data"]["lesion_ids"] is None
    assert resolve_target(run=run).config["data"]["lesion_ids"] == str(lesion_csv)
    assert resolve_target(run=run, data=str(other), overrides=[f"data.lesion_ids={lesion_csv}"]
                          ).config["data"]["lesion_ids"] == str(lesion_csv)

    isic = tmp_path / "isic"
    _build_isic2018(isic, sample_dir, sample_metadata, split="Training")
    _build_isic2018(isic, sample_dir, sample_metadata, split="Test")
    isic_run = run_on(load_config(None, ["data.format=isic2018", "data.subset=Training"], {"data": {"path": str(isic)}}))
    official_test = resolve_target(run=isic_run, data=str(isic), split="test")
    assert official_test.split_dir is None and official_test.config["data"]["subset"] == "Test"
