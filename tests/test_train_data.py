"""FER-2013 loaders on the real data set, the csv layout, and clear errors for bad paths."""

import csv
import logging
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from disklimit import error_lines_under_file_size_limit

from train import data

# The per-split counts of shared/fer2013/README.md.
README_COUNTS = {
    "train": {
        "angry": 3995,
        "disgust": 436,
        "fear": 4097,
        "happy": 7215,
        "neutral": 4965,
        "sad": 4830,
        "surprise": 3171,
    },
    "public": {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607, "sad": 653, "surprise": 415},
    "private": {"angry": 491, "disgust": 55, "fear": 528, "happy": 879, "neutral": 626, "sad": 594, "surprise": 416},
}


@pytest.mark.parametrize("split", data.SPLITS)
def test_folder_counts_match_readme(fer2013_dir, cache_dir, split):
    loaded = data.load_split(fer2013_dir, split, cache_dir)
    assert loaded.counts() == README_COUNTS[split]
    assert loaded.x.shape == (sum(README_COUNTS[split].values()), 48, 48)
    assert loaded.x.dtype == np.uint8


def test_cache_returns_identical_arrays(fer2013_dir, tmp_path):
    first = data.load_split(fer2013_dir, "public", tmp_path)
    assert list(tmp_path.glob("*.npz"))
    again = data.load_split(fer2013_dir, "public", tmp_path)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.y, again.y)


def test_cache_follows_changes_inside_the_data_folder(fer2013_dir, tmp_path):
    """A reviewer swapping their own images into the same folder must get numbers on those images."""
    root = first_images(fer2013_dir, tmp_path / "fer", "test", "PublicTest", 2)
    cache = tmp_path / "cache"
    assert np.bincount(data.load_split(root, "public", cache).y).tolist() == [2] * 7
    moved = next((root / "test" / "happy").glob("*.jpg"))
    moved.rename(root / "test" / "sad" / moved.name)  # relabelled
    next((root / "test" / "angry").glob("*.jpg")).unlink()  # removed
    assert np.bincount(data.load_split(root, "public", cache).y).tolist() == [1, 2, 2, 1, 2, 3, 2]


def test_csv_layout_gives_the_same_faces_as_folders(fer2013_dir, cache_dir, tmp_path, caplog):
    csv_emotion = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5, "neutral": 6}
    usage = {"train": "Training", "public": "PublicTest", "private": "PrivateTest"}
    expected = {s: data.load_split(fer2013_dir, s, cache_dir).head(3) for s in data.SPLITS}
    path = tmp_path / "fer2013.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        for split, part in expected.items():
            for image, label in zip(part.x, part.y):
                writer.writerow([csv_emotion[data.CLASS_NAMES[label]], " ".join(map(str, image.ravel())), usage[split]])
    for split in data.SPLITS:
        for source in (path, tmp_path):  # the file itself, or the folder holding it
            loaded = data.load_split(source, split)
            np.testing.assert_array_equal(loaded.x, expected[split].x)
            np.testing.assert_array_equal(loaded.y, expected[split].y)
    (tmp_path / "train").mkdir()  # image folders beside the CSV are not read: say so
    with caplog.at_level(logging.WARNING, logger="train.data"):
        data.load_split(tmp_path, "public")
    assert "the image folders beside it are not read" in caplog.text


def test_csv_pixel_out_of_range_or_a_missing_split_is_a_data_error(tmp_path):
    path = tmp_path / "fer2013.csv"
    row = " ".join(["256"] + ["0"] * 2303)
    path.write_text(f"emotion,pixels,Usage\n3,{row},Training\n")
    with pytest.raises(data.DataError, match=r"fer2013.csv:2: malformed row"):
        data.load_split(path, "train")
    path.write_text(f"emotion,pixels,Usage\n3,{row.replace('256', '255')},Training\n")
    with pytest.raises(data.DataError, match=r"no rows for public, private"):
        data.load_split(path, "train")


def test_malformed_csv_names_file_and_line(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(data.DataError, match=r"fer2013.csv:2: malformed row"):
        data.load_split(path, "train")
    path.write_text("label,image\n")
    with pytest.raises(data.DataError, match="expected columns emotion,pixels,Usage"):
        data.load_split(path, "train")


def test_missing_data_dir_names_path_and_layout(tmp_path):
    with pytest.raises(data.DataError, match=r"not found at .*nowhere.*train/<class>/\*\.jpg"):
        data.load_split(tmp_path / "nowhere", "train")
    (tmp_path / "train" / "happy").mkdir(parents=True)
    with pytest.raises(data.DataError, match="lacks class folders angry, disgust"):
        data.load_split(tmp_path, "train")


def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert data.resolve_data_dir("/explicit") == type(tmp_path)("/explicit")


def test_train_cli_wrong_data_path_is_one_clear_line(repo_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(tmp_path / "missing") in lines[0]
    assert not list(tmp_path.iterdir())  # a run that cannot start leaves no empty run folder behind


def test_training_loads_the_data_before_making_run_folders(tmp_path):
    from train.config import load_config
    from train.fit import train

    cfg = load_config(
        None,
        {
            "data": str(tmp_path / "nowhere"),
            "output_dir": str(tmp_path / "runs"),
            "students": {"small": {"params": {"widths": [4]}}},
        },
    )
    with pytest.raises(data.DataError, match="not found at"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


def test_face_margin_matches_haar_on_fer2013(fer2013_dir, cache_dir):
    """The sidecar's face_margin says how a Haar box relates to a FER-2013 crop; check the number."""
    from convert.tflite import FACE_MARGIN

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = data.load_split(fer2013_dir, "public", cache_dir).head(40)
    ratios = []
    for image in faces.x:
        big = cv2.resize(image, (192, 192), interpolation=cv2.INTER_CUBIC)
        found = cascade.detectMultiScale(
            cv2.copyMakeBorder(big, 96, 96, 96, 96, cv2.BORDER_CONSTANT, value=128), 1.1, 5, minSize=(60, 60)
        )
        if len(found) == 1:
            ratios.append(found[0][2] / 192)
    assert len(ratios) > 150
    assert abs(1 / np.median(ratios) - FACE_MARGIN) < 0.05


def first_images(fer2013_dir: Path, root: Path, folder: str, prefix: str, per_class: int) -> Path:
    """A small data set under ``root``: the first ``per_class`` ``<prefix>_*.jpg`` images of each class in one
    folder of FER-2013 (``train`` or ``test``)."""
    import shutil

    for name in data.CLASS_NAMES:
        (root / folder / name).mkdir(parents=True)
        for image in sorted((fer2013_dir / folder / name).glob(f"{prefix}_*.jpg"))[:per_class]:
            shutil.copy2(image, root / folder / name / image.name)
    return root


def test_a_truncated_jpeg_is_refused_by_name(fer2013_dir, tmp_path):
    """OpenCV decodes a JPEG cut short without an error, greying out its missing rows: a half-copied data set
    would train on grey faces without a word."""
    root = first_images(fer2013_dir, tmp_path / "fer", "test", "PublicTest", 2)
    assert len(data.load_split(root, "public").y) == 14
    cut = sorted((root / "test" / "sad").glob("*.jpg"))[1]
    encoded = cut.read_bytes()
    cut.write_bytes(encoded[: len(encoded) * 2 // 3])
    assert cv2.imread(str(cut), cv2.IMREAD_GRAYSCALE) is not None  # what the loader used to accept
    with pytest.raises(data.DataError, match=rf"{cut.name}: a truncated JPEG"):
        data.load_split(root, "public")
    cut.write_bytes(b"not an image at all\xff\xd9")
    with pytest.raises(data.DataError, match=rf"{cut.name}: not a readable image"):
        data.load_split(root, "public")


def test_a_class_folder_without_images_is_refused_by_name(fer2013_dir, tmp_path):
    """A class folder left empty (a copy that stopped, a filter gone wrong) would train a model that never saw
    that class, and report it as scored."""
    import shutil

    root = tmp_path / "fer"
    for name in data.CLASS_NAMES:
        (root / "test" / name).mkdir(parents=True)
        for image in sorted((fer2013_dir / "test" / name).glob("PublicTest_*.jpg"))[:2]:
            shutil.copy2(image, root / "test" / name / image.name)
    assert len(data.load_split(root, "public").y) == 14
    for image in (root / "test" / "disgust").glob("*.jpg"):
        image.unlink()
    for image in (root / "test" / "fear").glob("*.jpg"):
        image.rename(image.with_suffix(".png"))  # only *.jpg are read
    with pytest.raises(data.DataError, match=rf"{root / 'test'}: no PublicTest_\*\.jpg images in disgust, fear"):
        data.load_split(root, "public")


def test_a_cache_the_disk_cannot_take_is_one_error_line_naming_it_and_leaves_no_partial_file(
    repo_root, fer2013_dir, tmp_path
):
    """On a full disk (here a file-size limit) the cache of a split used to stay half-written in the cache folder
    (as large as the limit allowed), and the error line named no file."""
    root = first_images(fer2013_dir, tmp_path / "fer", "train", "Training", 3)
    cache = tmp_path / "cache"
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data: {root}\ncache_dir: {cache}\noutput_dir: {tmp_path / 'runs'}\nepochs: 1\n")
    limit = 7 * 3 * 48 * 48 // 2  # half the split's pixels
    errors = error_lines_under_file_size_limit(
        [sys.executable, "-m", "train", "--config", str(config)], limit, repo_root
    )
    assert len(errors) == 1, errors
    assert re.fullmatch(
        rf"error: {re.escape(str(cache))}/fer2013-[0-9a-f]{{16}}-train\.npz: File too large", errors[0]
    ), errors
    assert list(cache.iterdir()) == []
