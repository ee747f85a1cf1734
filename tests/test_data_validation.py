"""Bad data is found, named, and handled by policy."""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import ImageFile

from dermalens.classes import class_index
from dermalens.data.readers import DataIssue, make_synthetic_dataset, read_dermamnist, read_ham10000
from dermalens.data.validation import (
    BadDataError,
    apply_bad_data_policy,
    find_unreadable_images,
    format_summary,
    summarise_dataset,
    write_issues_csv,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def bad_ham10000(tmp_path: Path, sample_dir: Path, sample_metadata: pd.DataFrame):
    """A HAM10000 layout with one item of each kind of bad data, and which id is which."""
    root = tmp_path / "bad"
    images = root / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    rows = sample_metadata.head(10).copy()
    ids = rows["image_id"].tolist()
    bad = {"truncated": ids[4], "text": ids[5], "zero_bytes": ids[6], "missing": ids[7],
           "unknown_label": ids[8], "duplicate": ids[0]}
    for image_id in ids:
        if image_id in (bad["truncated"], bad["text"], bad["zero_bytes"], bad["missing"]):
            continue
        (images / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    jpeg = (sample_dir / f"{bad['truncated']}.jpg").read_bytes()
    (images / f"{bad['truncated']}.jpg").write_bytes(jpeg[: int(len(jpeg) * 0.4)])
    (images / f"{bad['text']}.jpg").write_text("this is a text file, not a JPEG\n")
    (images / f"{bad['zero_bytes']}.jpg").write_bytes(b"")
    rows.loc[rows["image_id"] == bad["unknown_label"], "dx"] = "xyz"
    duplicate = rows[rows["image_id"] == bad["duplicate"]].assign(dx="df")  # no sample image is a dermatofibroma
    pd.concat([rows, duplicate]).to_csv(root / "HAM10000_metadata.csv", index=False)
    good = [i for i in ids if i not in set(bad.values()) - {bad["duplicate"]}]
    return root, bad, good


def test_reader_names_missing_unknown_and_duplicate_rows(bad_ham10000):
    root, bad, _ = bad_ham10000
    dataset = read_ham10000(root)
    by_kind = {issue.kind: issue for issue in dataset.issues}
    assert sorted(by_kind) == ["duplicate_id", "missing_file", "unknown_label"] and len(dataset.issues) == 3
    assert by_kind["missing_file"].image_id == bad["missing"]
    assert by_kind["unknown_label"].image_id == bad["unknown_label"] and "'xyz'" in by_kind["unknown_label"].detail
    assert by_kind["duplicate_id"].image_id == bad["duplicate"] and "line 12" in by_kind["duplicate_id"].detail
    # The first row of a duplicated id is kept, with its original label.
    kept = dataset.records[dataset.records["image_id"] == bad["duplicate"]]
    assert len(kept) == 1 and kept["label"].iloc[0] != class_index("df")
    assert len(dataset) == 8


def test_decode_check_finds_truncated_text_and_empty_files(bad_ham10000):
    root, bad, _ = bad_ham10000
    dataset = read_ham10000(root)
    issues = find_unreadable_images(dataset, progress=False)
    assert {i.image_id for i in issues} == {bad["truncated"], bad["text"], bad["zero_bytes"]}
    assert all(i.kind == "unreadable_image" for i in issues)
    by_id = {i.image_id: i for i in issues}
    assert Path(by_id[bad["text"]].path).name == f"{bad['text']}.jpg"
    assert "truncated" in by_id[bad["truncated"]].detail
    assert "0 bytes" in by_id[bad["zero_bytes"]].detail
    assert "is not an image" in by_id[bad["text"]].detail


def test_decode_check_applies_the_pixel_limit_of_training_and_evaluation(bad_ham10000):
    from support.image_samples import png_claiming_size

    root, bad, good = bad_ham10000
    image = root / "HAM10000_images_part_1" / f"{good[1]}.jpg"
    image.unlink()
    png_claiming_size(image, 12_000, 10_000)   # under Pillow's own refusal (179 MP), over dermalens' 100 MP
    dataset = read_ham10000(root)
    issues = {i.image_id: i.detail for i in find_unreadable_images(dataset, progress=False)}
    assert "ImageTooLargeError" in issues[good[1]] and "12000 x 10000 pixels" in issues[good[1]]


def test_decode_check_is_strict_even_if_truncated_loading_was_enabled(bad_ham10000):
    root, bad, _ = bad_ham10000
    dataset = read_ham10000(root)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        issues = find_unreadable_images(dataset, progress=False)
        assert bad["truncated"] in {i.image_id for i in issues}
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_error_policy_raises_naming_every_bad_file(bad_ham10000):
    root, bad, _ = bad_ham10000
    dataset = read_ham10000(root)
    issues = dataset.issues + find_unreadable_images(dataset, progress=False)
    with pytest.raises(BadDataError) as caught:
        apply_bad_data_policy(dataset, issues, "error")
    message = str(caught.value)
    assert len(caught.value.issues) == 6
    for image_id in bad.values():
        assert image_id in message
    for kind in ("truncated", "text", "zero_bytes"):
        assert f"{bad[kind]}.jpg" in message
    assert "missing_file" in message and "unknown_label" in message and "duplicate_id" in message


def test_skip_policy_drops_exactly_the_bad_rows(bad_ham10000):
    root, bad, good = bad_ham10000
    dataset = read_ham10000(root)
    unreadable = find_unreadable_images(dataset, progress=False)
    with pytest.warns(UserWarning, match=r"skipped 6 bad item\(s\)"):
        cleaned = apply_bad_data_policy(dataset, dataset.issues + unreadable, "skip")
    assert sorted(cleaned.records["image_id"]) == sorted(good)
    assert cleaned.records.index.tolist() == list(range(len(good)))
    assert len(cleaned.issues) == 6  # reader issues kept once, decode issues added
    assert find_unreadable_images(cleaned, progress=False) == []
    assert len(dataset) == 8  # the input dataset is not modified


def test_policy_without_issues_returns_dataset_silently(mini_ham10000):
    dataset = read_ham10000(mini_ham10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_bad_data_policy(dataset, [], "skip") is dataset
        assert apply_bad_data_policy(dataset, [], "error") is dataset


def test_unknown_policy_is_rejected_by_name(mini_ham10000):
    with pytest.raises(ValueError, match="'ignore'"):
        apply_bad_data_policy(read_ham10000(mini_ham10000), [], "ignore")


def test_long_issue_lists_are_cut_short():
    issues = [DataIssue("missing_file", f"ISIC_{i:07d}", None, "gone") for i in range(120)]
    message = str(BadDataError(issues))
    assert "ISIC_0000049" in message and "ISIC_0000050" not in message
    assert message.splitlines()[-2] == "  ... and 70 more"
    assert message.splitlines()[-1].endswith("--set data.on_bad_data=skip")   # the way out is named
    assert len(message.splitlines()) == 53


def test_write_issues_csv(tmp_path):
    issues = [
        DataIssue("unreadable_image", "ISIC_1", "/data/ISIC_1.jpg", "truncated, badly"),
        DataIssue("missing_file", "ISIC_2", None, "no file"),
    ]
    path = write_issues_csv(issues, tmp_path / "out" / "issues.csv")
    table = pd.read_csv(path, keep_default_na=False)
    assert table.columns.tolist() == ["kind", "image_id", "path", "detail"]
    assert table.to_dict("records")[0] == {"kind": "unreadable_image", "image_id": "ISIC_1",
                                           "path": "/data/ISIC_1.jpg", "detail": "truncated, badly"}
    write_issues_csv(issues[:1], path)  # overwrite
    assert len(pd.read_csv(path)) == 1
    assert [p.name for p in path.parent.iterdir()] == ["issues.csv"]  # no temp files left


def test_summary_of_a_real_dataset(shared_data, bad_ham10000):
    summary = summarise_dataset(read_dermamnist(shared_data))
    assert summary["n_images"] == 10015 and summary["n_lesions"] == 10015
    assert summary["images_per_class"]["nv"] == 6705
    assert summary["official_splits"] == {"test": 2005, "train": 7007, "val": 1003}
    assert summary["is_synthetic"] is False
    text = format_summary(summary)
    assert "dermamnist" in text and "6705" in text and "train 7007" in text and "SYNTHETIC" not in text

    root, _, _ = bad_ham10000
    summary = summarise_dataset(read_ham10000(root))
    assert summary["issues_by_kind"] == {"duplicate_id": 1, "missing_file": 1, "unknown_label": 1}
    assert summary["n_lesions"] == summary["lesions_per_class"]["nv"] + summary["lesions_per_class"]["mel"] \
        + summary["lesions_per_class"]["bcc"]
    assert "1 missing_file" in format_summary(summary)


def test_summary_marks_synthetic_data():
    summary = summarise_dataset(make_synthetic_dataset(n_per_class=3, size=16))
    assert summary["is_synthetic"] is True and summary["n_lesions"] == 7
    assert "SYNTHETIC" in format_summary(summary)
