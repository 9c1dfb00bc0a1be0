"""FER-2013 loading: the Kaggle image-folder layout and the original ``fer2013.csv``.

Both layouts yield the same arrays: ``x`` uint8 of shape (N, 48, 48) and ``y`` int64
class indices in :data:`CLASS_NAMES` order. That order is the single source of truth for
labels; it is written into every run folder and, from there, into the model's sidecar.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
IMAGE_SIZE = 48
SPLITS = ("train", "public", "private")
DATA_ENV = "FER2013_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "fer2013"

# fer2013.csv's emotion column: 0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral
_CSV_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
_CSV_USAGE = {"Training": "train", "PublicTest": "public", "PrivateTest": "private"}
_FILE_PREFIX = {"train": "Training_", "public": "PublicTest_", "private": "PrivateTest_"}


class DataError(Exception):
    """The data set is missing or not in a layout we understand."""


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8 (N, 48, 48)
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        return {name: int((self.y == i).sum()) for i, name in enumerate(CLASS_NAMES)}

    def head(self, n_per_class: int, seed: int = 0) -> Split:
        """A class-balanced subset (at most ``n_per_class`` per class), for quick runs."""
        rng = np.random.default_rng(seed)
        keep = []
        for i in range(len(CLASS_NAMES)):
            idx = np.flatnonzero(self.y == i)
            keep.append(rng.permutation(idx)[:n_per_class])
        order = np.sort(np.concatenate(keep))
        return Split(self.x[order], self.y[order])


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Flag or config value first, then ``$FER2013_DIR``, then ``../shared/fer2013``."""
    for candidate in (explicit, os.environ.get(DATA_ENV)):
        if candidate:
            return Path(candidate).expanduser()
    return DEFAULT_DATA_DIR


def load_split(data: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None) -> Split:
    """Load one split from a Kaggle folder tree or a ``fer2013.csv`` (file or folder holding it)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    path = Path(data)
    csv_path = path if path.suffix == ".csv" else path / "fer2013.csv"
    if csv_path.is_file():
        if csv_path.parent == path and (path / "train").is_dir():
            log.warning("%s: reading fer2013.csv; the image folders beside it are not read", path)
        return _load_csv(csv_path)[split]
    if not path.is_dir():
        raise DataError(
            f"FER-2013 not found at {path}: expected a folder with train/<class>/*.jpg and "
            f"test/<class>/{{PublicTest,PrivateTest}}_*.jpg, or a fer2013.csv "
            f"(set --data or ${DATA_ENV})"
        )
    files = _class_files(path, split)
    cached = _cache_file(path, split, files, cache_dir)
    if cached is not None and cached.is_file():
        with np.load(cached) as z:
            return Split(z["x"], z["y"])
    result = _load_folders(path, split, files)
    if cached is not None:
        _write_cache(cached, result)
    return result


def _write_cache(cached: Path, split: Split) -> None:
    """``split`` into ``cached`` whole or not at all: a full disk leaves no partial file (as large as the split) in
    the cache folder, and its OSError names the cache file."""
    tmp = cached.with_suffix(".tmp.npz")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, x=split.x, y=split.y)
        os.replace(tmp, cached)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(cached)
        raise


def _cache_file(root: Path, split: str, files: list[list[Path]], cache_dir) -> Path | None:
    """The cache of one split, named by the folder and by the name, size and time of every image it holds:
    an image added, removed, moved to another class or replaced makes a new cache, never a stale answer."""
    if cache_dir is None:
        return None
    digest = hashlib.sha1(str(root.resolve()).encode())
    for path in (f for class_files in files for f in class_files):
        stat = path.stat()
        digest.update(f"{path.parent.name}/{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"fer2013-{digest.hexdigest()[:16]}-{split}.npz"


def _split_folder(root: Path, split: str) -> Path:
    """The Kaggle layout: train/ holds the training split, test/ both test splits (by file prefix)."""
    return root / ("train" if split == "train" else "test")


def _class_files(root: Path, split: str) -> list[list[Path]]:
    """The split's images, one sorted list per class in ``CLASS_NAMES`` order."""
    folder = _split_folder(root, split)
    return [sorted((folder / name).glob(f"{_FILE_PREFIX[split]}*.jpg")) for name in CLASS_NAMES]


def _load_folders(root: Path, split: str, class_files: list[list[Path]]) -> Split:
    folder = _split_folder(root, split)
    prefix = _FILE_PREFIX[split]
    missing = [c for c in CLASS_NAMES if not (folder / c).is_dir()]
    if missing:
        raise DataError(f"{folder} lacks class folders {', '.join(missing)}: expected {folder}/<class>/{prefix}*.jpg")
    empty = [name for name, files in zip(CLASS_NAMES, class_files) if not files]
    if empty and len(empty) < len(CLASS_NAMES):
        # a model never shown a class still scores it: it would train and ship without a word
        raise DataError(
            f"{folder}: no {prefix}*.jpg images in {', '.join(empty)}: every class needs its faces "
            f"({folder}/<class>/{prefix}*.jpg)"
        )
    images, labels = [], []
    for index, files in enumerate(class_files):
        for f in files:
            img = _read_image(f)
            if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
                img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
            images.append(img)
        labels.extend([index] * len(files))
    if not images:
        raise DataError(f"{folder}: no {prefix}*.jpg images found")
    log.info("loaded %d %s images from %s", len(images), split, folder)
    return Split(np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64))


def _read_image(path: Path) -> np.ndarray:
    """One grayscale image; a JPEG cut short (a copy or download stopped part way) is refused by name, since
    OpenCV decodes it without an error, greying out the rows it lacks."""
    encoded = path.read_bytes()
    if path.suffix.lower() in (".jpg", ".jpeg") and not encoded.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        raise DataError(f"{path}: a truncated JPEG (no end-of-image marker): copy it again or remove it")
    img = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataError(f"{path}: not a readable image")
    return img


def _load_csv(path: Path) -> dict[str, Split]:
    rows: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"emotion", "pixels", "Usage"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns emotion,pixels,Usage, found {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            try:
                split = _CSV_USAGE[row["Usage"]]
                label = CLASS_NAMES.index(_CSV_EMOTIONS[int(row["emotion"])])
                pixels = np.array(row["pixels"].split(), dtype=np.uint8)
                image = pixels.reshape(IMAGE_SIZE, IMAGE_SIZE)
            except (KeyError, ValueError, IndexError, OverflowError) as exc:  # OverflowError: a pixel above 255
                raise DataError(f"{path}:{line_no}: malformed row ({exc})") from None
            rows[split][0].append(image)
            rows[split][1].append(label)
    empty = [split for split, (images, _) in rows.items() if not images]
    if empty:
        raise DataError(f"{path}: no rows for {', '.join(empty)} (Usage Training, PublicTest, PrivateTest)")
    return {
        split: Split(np.stack(images), np.asarray(labels, dtype=np.int64)) for split, (images, labels) in rows.items()
    }
