"""Every image format a dermatoscope or a public data set uses, decoded and listed the same way everywhere.

Real files converted from the shared HAM10000 sample photos: BMP (PH2 ships as BMP),
16-bit TIFF, PNG with alpha, WebP, JPEG with EXIF orientation, upper-case extensions;
plus CMYK with an ICC profile, headers claiming huge sizes, symlink loops.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dermalens.data.image_files import (
    ImageListingWarning,
    NoImagesFound,
    find_image_files,
)
from dermalens.data.readers import read_class_folders, read_ham10000
from dermalens.data.readers.images import (
    ALPHA_BACKGROUND,
    ImageTooLargeError,
    NotAnImageError,
    UnreadableImageError,
    check_image_size,
    decode_image_file,
    pil_to_rgb,
)
from dermalens.data.validation import describe_issues
from support.image_samples import (
    FORMATS,
    cmyk_profile_cyan_prints_red,
    png_claiming_size,
    rgb_of,
    sample_photos,
    write_format,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def photo(sample_dir) -> Path:
    return sample_photos(sample_dir, 1)[0]


@pytest.fixture(scope="module")
def format_dir(tmp_path_factory, photo) -> Path:
    folder = tmp_path_factory.mktemp("formats")
    for kind, suffix in FORMATS.items():
        write_format(photo, folder / f"{kind}{suffix}", kind)
    return folder


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", ["bmp", "tiff16-rgb", "webp", "jpeg-upper-case"])
def test_each_format_decodes_to_the_photos_pixels(format_dir, photo, kind):
    decoded = decode_image_file(format_dir / f"{kind}{FORMATS[kind]}")
    original = rgb_of(photo)
    assert decoded.shape == original.shape and decoded.dtype == np.uint8
    tolerance = 6 if kind.startswith("jpeg") else 0          # JPEG re-encoding is lossy, the others are not
    assert np.abs(decoded.astype(int) - original).mean() <= tolerance


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white(format_dir, photo):
    decoded = decode_image_file(format_dir / "tiff16-grey.tiff")
    grey = np.asarray(Image.fromarray(rgb_of(photo)).convert("L"))
    assert decoded.shape == (*grey.shape, 3) and decoded.mean() < 250
    assert np.abs(decoded[..., 0].astype(int) - grey).max() <= 1


def test_exif_orientation_is_applied(format_dir, photo):
    decoded = decode_image_file(format_dir / "jpeg-exif-rotated.jpg")
    original = rgb_of(photo)
    assert decoded.shape == original.shape                      # stored 450 x 600, seen 600 x 450
    assert np.abs(decoded.astype(int) - original).mean() < 6


def test_transparency_is_composited_on_mid_grey(format_dir, photo, tmp_path):
    decoded = decode_image_file(format_dir / "png-alpha.png")
    original = rgb_of(photo)
    assert (decoded[:40] == ALPHA_BACKGROUND).all() and (decoded[-40:] == ALPHA_BACKGROUND).all()
    np.testing.assert_array_equal(decoded[40:-40], original[40:-40])       # opaque pixels untouched
    half = Image.new("RGBA", (2, 1), (255, 0, 0, 128))
    assert pil_to_rgb(half)[0, 0].tolist() == pytest.approx([191, 64, 64], abs=1)   # halfway to the grey
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.info["transparency"] = 0                                          # palette entry 0 = transparent
    assert (pil_to_rgb(palette) == ALPHA_BACKGROUND).all()
    # A 16-bit grey PNG with a grey value marked transparent (it came out black).
    deep = np.array([[0, 0], [0, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep-key.png", transparency=0)
    keyed = decode_image_file(tmp_path / "deep-key.png")
    assert (keyed[0] == ALPHA_BACKGROUND).all() and keyed[1, 1].tolist() == [255, 255, 255]


def test_cmyk_is_converted_through_its_icc_profile(tmp_path, photo):
    cmyk = Image.new("CMYK", (64, 48), (255, 0, 0, 0))                     # cyan ink only
    with_profile, without = tmp_path / "profiled.jpg", tmp_path / "plain.jpg"
    cmyk.save(with_profile, "JPEG", quality=95, icc_profile=cmyk_profile_cyan_prints_red())
    cmyk.save(without, "JPEG", quality=95)
    red, cyan = decode_image_file(with_profile)[24, 32], decode_image_file(without)[24, 32]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red                 # what the profile says cyan prints as
    assert cyan[0] < 60 and cyan[1] > 200 and cyan[2] > 200, cyan            # no profile: the plain conversion
    photo_cmyk = tmp_path / "photo_cmyk.jpg"                                  # a real photo through a profile
    Image.fromarray(rgb_of(photo)).convert("CMYK").save(photo_cmyk, "JPEG", quality=95,
                                                        icc_profile=cmyk_profile_cyan_prints_red())
    assert decode_image_file(photo_cmyk).shape == (450, 600, 3)


def test_a_file_that_is_not_an_image_is_named_as_such(tmp_path):
    fake = tmp_path / "lesion.jpg"
    fake.write_text("<html>404 Not Found</html>")
    with pytest.raises(NotAnImageError, match=r"lesion\.jpg is not an image"):
        decode_image_file(fake)


def test_content_decides_not_the_extension(tmp_path, photo):
    png_named_jpg, no_extension = tmp_path / "really_png.jpg", tmp_path / "IMG0001"
    Image.fromarray(rgb_of(photo)).save(png_named_jpg, "PNG")
    no_extension.write_bytes(photo.read_bytes())
    np.testing.assert_array_equal(decode_image_file(png_named_jpg), rgb_of(photo))
    np.testing.assert_array_equal(decode_image_file(no_extension), decode_image_file(photo))


def test_a_huge_header_is_refused_before_decoding(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = png_claiming_size(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png has 1600 megapixels.*refused before decoding"):
        decode_image_file(bomb)
    # Between Pillow's warning and its own refusal, dermalens' explicit limit decides.
    big = png_claiming_size(tmp_path / "big.png", 12_000, 10_000)
    with pytest.raises(ImageTooLargeError, match=r"big\.png is 12000 x 10000 pixels \(120 megapixels\), more than the limit of 100 megapixels"):
        decode_image_file(big)
    monkeypatch.setenv("DERMALENS_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match=r"40 x 30 pixels \(0.0012 megapixels\), more than the limit of 0.001 megapixels"):
        check_image_size((40, 30))


def test_draft_decoding_keeps_the_side_asked_for(photo, format_dir):
    full = decode_image_file(photo)
    reduced = decode_image_file(photo, min_side=100)
    assert full.shape == (450, 600, 3) and reduced.shape == (113, 150, 3)     # 1/4 scale: 113 >= 100
    assert decode_image_file(photo, min_side=300).shape == full.shape         # no smaller scale keeps 300
    assert decode_image_file(format_dir / "bmp.bmp", min_side=100).shape == full.shape   # JPEG only
    small = np.asarray(Image.fromarray(full).resize((150, 113), Image.Resampling.BOX), dtype=int)
    assert np.abs(reduced.astype(int) - small).mean() < 3


def test_a_symlink_loop_file_is_named(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(UnreadableImageError, match="loop.jpg"):
        decode_image_file(loop)


# --------------------------------------------------------------------------- listing


def test_one_listing_of_every_format_by_content(format_dir, tmp_path, photo):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for file in format_dir.iterdir():
        (folder / file.name).symlink_to(file)
    (folder / "IMG0001").write_bytes(photo.read_bytes())                       # a JPEG without an extension
    (folder / "notes.txt").write_text("patient consented")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "x_segmentation.png").symlink_to(format_dir / "png-alpha.png")   # a lesion mask: not a photo
    with pytest.warns(ImageListingWarning, match=r"left out 1 file\(s\) that are not images.*notes\.txt"):
        found = find_image_files([folder])
    expected = sorted([*(f"{kind}{suffix}" for kind, suffix in FORMATS.items()), "IMG0001"])
    assert sorted(p.name for p in found) == expected


def test_folders_are_listed_with_their_subfolders(tmp_path, photo):
    for relative in ("mel/a.jpg", "nv/b.JPEG", "nv/2019/c.jpg", "loose.jpg"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).symlink_to(photo)
    assert [p.relative_to(tmp_path).as_posix() for p in find_image_files([tmp_path])] == [
        "loose.jpg", "mel/a.jpg", "nv/2019/c.jpg", "nv/b.JPEG"]
    assert [p.name for p in find_image_files([tmp_path], recursive=False)] == ["loose.jpg"]
    assert [p.name for p in find_image_files([str(tmp_path / "nv" / "*.JPEG")])] == ["b.JPEG"]


def test_a_symlink_loop_in_a_data_folder_is_named_not_followed(tmp_path, photo):
    (tmp_path / "mel").mkdir()
    (tmp_path / "mel" / "a.jpg").symlink_to(photo)
    (tmp_path / "mel" / "back").symlink_to(tmp_path)                            # mel/back/mel/back/...
    (tmp_path / "mel" / "self.jpg").symlink_to(tmp_path / "mel" / "self.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_image_files([tmp_path])
        globbed = find_image_files([f"{tmp_path}/**/*.jpg"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["mel/a.jpg"]
    assert [p.relative_to(tmp_path).as_posix() for p in globbed] == ["mel/a.jpg"]
    text = " ".join(str(w.message) for w in caught)
    assert f"symlink loop: {tmp_path / 'mel' / 'back'} leads back to" in text
    assert "self.jpg is a symlink loop" in text


def test_a_folder_without_images_says_what_it_holds(tmp_path):
    for name in ("IMG_0001.heic", "IMG_0002.heic", "readme.txt"):
        (tmp_path / name).write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    with pytest.raises(NoImagesFound, match=r"it holds 3 file\(s\) that are not images Pillow reads "
                                            r"\(2 \.heic, 1 \.txt\)"):
        find_image_files([tmp_path])


def test_a_missing_file_is_kept_for_the_decoder_to_name(tmp_path):
    assert find_image_files([tmp_path / "nope.jpg"]) == [tmp_path / "nope.jpg"]
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        decode_image_file(tmp_path / "nope.jpg")


# --------------------------------------------------------------------------- readers


def bmp_class_folders(root: Path, photos: list[Path], per_class: int) -> Path:
    """PH2's layout: class folders of BMP images."""
    for i, source in enumerate(photos[:2 * per_class]):
        folder = root / ("mel" if i < per_class else "nv")
        folder.mkdir(parents=True, exist_ok=True)
        write_format(source, folder / f"IMD{i:03d}.bmp", "bmp")
    return root


def test_class_folders_of_bmp_images_are_read(tmp_path, sample_dir):
    root = bmp_class_folders(tmp_path / "ph2", sample_photos(sample_dir, 6), per_class=3)
    dataset = read_class_folders(root)
    assert dataset.classes == ("mel", "nv") and len(dataset) == 6 and dataset.issues == []
    assert dataset.records["path"].str.endswith(".bmp").all()
    assert sorted(map(str, find_image_files([root]))) == sorted(dataset.records["path"])   # predict lists the same
    assert dataset.load_image(0).shape == (450, 600, 3)


def test_a_class_folder_of_unreadable_files_says_how_many_were_seen(tmp_path):
    for folder, count in (("mel", 3), ("nv", 2)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            (tmp_path / folder / f"IMD{i}.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    dataset = read_class_folders(tmp_path)
    empty = {issue.path: issue.detail for issue in dataset.issues if issue.path != str(tmp_path)}
    assert empty[str(tmp_path / "mel")] == ("class folder mel/: 3 file(s) seen, none of them an image Pillow can read "
                                            "(3 .heic; e.g. IMD0.heic); convert them to JPEG or PNG")
    lines = describe_issues(dataset.issues).splitlines()
    assert f"  empty: {tmp_path / 'mel'}: class folder mel/: 3 file(s) seen" in lines[1]
    assert not any("- (" in line for line in lines)


def test_masks_and_loose_images_stay_out_of_class_folders(tmp_path, sample_dir):
    photos = sample_photos(sample_dir, 2)
    (tmp_path / "mel").mkdir()
    (tmp_path / "mel" / "a.jpg").symlink_to(photos[0])
    (tmp_path / "mel" / "a_segmentation.png").symlink_to(sample_dir / f"{photos[0].stem}_segmentation.png")
    (tmp_path / "stray.jpg").symlink_to(photos[1])
    with pytest.warns(ImageListingWarning, match=r"1 image\(s\) directly in .* are in no class folder"):
        dataset = read_class_folders(tmp_path)
    assert dataset.records["image_id"].tolist() == ["a"]


def test_ham10000_finds_images_of_any_format_by_id(mini_ham10000, photo):
    images = mini_ham10000 / "HAM10000_images_part_1"
    first = sorted(images.iterdir())[0]
    first.unlink()
    Image.fromarray(rgb_of(photo)).save(images / f"{first.stem}.TIFF", "TIFF")
    Image.fromarray(rgb_of(photo)).save(images / f"{first.stem}.webp", "WEBP")   # .tiff ranks first, by name
    dataset = read_ham10000(mini_ham10000)
    assert len(dataset) == 50 and dataset.issues == []
    path = dataset.records.set_index("image_id").loc[first.stem, "path"]
    assert path == str(images / f"{first.stem}.TIFF")
    np.testing.assert_array_equal(dataset.load_image(int(np.flatnonzero(dataset.records["path"] == path)[0])),
                                  rgb_of(photo))


def test_training_cache_decodes_in_full_whatever_predict_does(tmp_path, sample_dir):
    from dermalens.data.cache import build_image_cache
    from dermalens.data.geometry import fit_to_square

    photos = sample_photos(sample_dir, 4)
    (tmp_path / "nv").mkdir()
    for photo in photos:
        (tmp_path / "nv" / photo.name).symlink_to(photo)
    dataset = read_class_folders(tmp_path)
    cached, issues = build_image_cache(dataset, 32, None, progress=False)
    full = np.stack([fit_to_square(decode_image_file(p), 32, "center_square") for p in dataset.records["path"]])
    drafted = np.stack([fit_to_square(decode_image_file(p, min_side=64), 32, "center_square")
                        for p in dataset.records["path"]])
    assert issues == [] and np.array_equal(cached, full)
    assert not np.array_equal(drafted, full)     # a reduced decode would have changed the training pixels
