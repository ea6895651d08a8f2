"""Datasets a harvest reads: local text (.txt, .jsonl, .parquet), an image folder, or a `datasets` hub name.

Every reader is random-access by sample index, so a harvest batch is a fixed index range [start, stop)
of the dataset and a resumed harvest re-forms exactly the batches of an uninterrupted one. Labels are
int64 ids into `label_names` (image folders: sorted subfolder names; a label column: sorted strings, or
integers as they are). Images are decoded lazily, one batch at a time; a file that fails to decode is
skipped and counted, never fatal.

`Dataset.shuffled(seed)` visits the samples in a seeded random order (the harvest's default): an image
folder is sorted by class, and a store written in that order would hold out only its last classes and
fill its shuffle windows with a few classes at a time. A store's sample ids are positions in that
order (`Dataset.order` maps them to file order), and `Dataset.texts` reads texts by those ids.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from sdlkit.errors import ConfigError

TEXT_FORMATS = (".txt", ".jsonl", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FORMATS_HELP = ".txt (one sample per line), .jsonl or .parquet (a text column), or an image folder"


@dataclass
class Samples:
    """The decodable samples of one index range: `items` (str or RGB PIL images) and their dataset indices."""

    items: list[Any]
    index: torch.Tensor  # int64 [len(items)]
    skipped: int  # samples of the range that could not be decoded


@dataclass
class Dataset:
    """A random-access dataset: `kind` says whether items are texts or images."""

    kind: Literal["text", "image"]
    path: str
    size: int
    labels: torch.Tensor | None  # int64 [size], ids into label_names
    label_names: list[str] | None
    _texts: Sequence[str] | None = None
    _files: Sequence[Path] | None = None
    _hub: Any = None
    _hub_column: str | None = None
    order: torch.Tensor | None = None  # int64 [size]: position -> original index (None: file order)

    def __len__(self) -> int:
        return self.size

    def fingerprint(self) -> str | None:
        """A hash of what the dataset holds, so that a resumed harvest can refuse data that changed: the
        texts and labels themselves; for an image folder its file names, sizes and labels (hashing every
        image would read the whole folder); for a hub dataset its own fingerprint (None if it has none)."""
        if self._hub is not None:
            found = getattr(self._hub, "_fingerprint", None)
            return f"hub:{found}" if found else None
        digest = hashlib.sha256()
        if self._texts is not None:
            for text in self._texts:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        for file in self._files or []:
            digest.update(f"{file.relative_to(self.path)}\0{file.stat().st_size}\0".encode())
        if self.labels is not None:
            digest.update(self.labels.numpy().tobytes())
            digest.update("\0".join(self.label_names or []).encode())
        return f"sha256:{digest.hexdigest()}"

    def shuffled(self, seed: int) -> Dataset:
        """The same samples visited in a seeded random order: position i is original sample order[i]
        (labels permuted alike), so sample ids in a store are positions in this order."""
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))
        return replace(self, order=order, labels=None if self.labels is None else self.labels[order])

    def texts(self, positions: Sequence[int]) -> list[str]:
        """The texts at `positions` of the visiting order (a store's sample ids): what the browser shows for
        a row that stands for a whole sample. Text datasets only."""
        if self.kind != "text":
            raise ConfigError(f"{self.path} holds images, not texts")
        indices = self.order[list(positions)].tolist() if self.order is not None else list(positions)
        if self._texts is not None:
            return [self._texts[i] for i in indices]
        return list(self._hub.select(indices)[self._hub_column])

    def load(self, start: int, stop: int) -> Samples:
        """Samples at positions [start, stop) of the visiting order, without the images that fail to
        decode; `index` holds their positions."""
        indices = (self.order[start:stop] if self.order is not None else torch.arange(start, stop)).tolist()
        if self._texts is not None:
            return Samples([self._texts[i] for i in indices], torch.arange(start, start + len(indices)), 0)
        if self._files is not None:
            return _decoded(_decode_files([self._files[i] for i in indices]), start)
        column = self._hub.select(indices)[self._hub_column]
        if self.kind == "text":
            return Samples(list(column), torch.arange(start, start + len(indices)), 0)
        return _decoded([_to_rgb(image) for image in column], start)


def open_dataset(
    path: str, *, text_column: str = "text", label_column: str | None = None, split: str = "train"
) -> Dataset:
    """The dataset at `path`: a .txt/.jsonl/.parquet file, an image folder, or (with `datasets`) a hub name."""
    local = Path(path).expanduser()
    if local.is_dir():
        if label_column is not None:
            raise ConfigError(f"--label-column does not apply to the image folder {path}: labels are its subfolders")
        return _image_folder(local)
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix == ".txt":
            if label_column is not None:
                raise ConfigError(f"{path} is plain text and has no columns: give a .jsonl or .parquet file for labels")
            return _text_dataset(str(local), _read_txt(local), None, label_column)
        if suffix == ".jsonl":
            texts, labels = _read_jsonl(local, text_column, label_column)
            return _text_dataset(str(local), texts, labels, label_column)
        if suffix == ".parquet":
            texts, labels = _read_parquet(local, text_column, label_column)
            return _text_dataset(str(local), texts, labels, label_column)
        raise ConfigError(f"unknown data format {local.suffix or '(no suffix)'!r} of {path}: give {FORMATS_HELP}")
    if local.suffix.lower() in (*TEXT_FORMATS, *IMAGE_SUFFIXES) or path.startswith((".", "/", "~")):
        raise ConfigError(f"data file {path} does not exist: give {FORMATS_HELP}")
    return _hub_dataset(path, text_column, label_column, split)


# ----- text ------------------------------------------------------------------------------------------
def _text_dataset(path: str, texts: list[str], labels: list[Any] | None, label_column: str | None) -> Dataset:
    if not texts:
        raise ConfigError(f"data file {path} holds no samples")
    ids, names = _label_ids(labels, label_column, path) if labels is not None else (None, None)
    return Dataset("text", path, len(texts), ids, names, _texts=texts)


def _read_txt(path: Path) -> list[str]:
    return [line for line in _read_text(path).splitlines() if line.strip()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_jsonl(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[Any] | None]:
    texts: list[str] = []
    labels: list[Any] | None = [] if label_column is not None else None
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} line {number} is not valid JSON: {err.msg}") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path} line {number} is not a JSON object; each line must be one record")
        for column in (text_column, label_column):
            if column is not None and column not in record:
                raise ConfigError(_missing_column(path, column, list(record), f" at line {number}"))
        texts.append(_text_value(record[text_column], path, f"line {number}"))
        if labels is not None:
            labels.append(record[label_column])
    return texts, labels


def _read_parquet(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[Any] | None]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise ConfigError(f"{path} is not a readable Parquet file ({err})") from None
    for column in (text_column, label_column):
        if column is not None and column not in names:
            raise ConfigError(_missing_column(path, column, names))
    try:
        table = pq.read_table(path, columns=[c for c in (text_column, label_column) if c is not None])
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a readable Parquet file ({err})") from None
    texts = [_text_value(value, path, f"row {i}") for i, value in enumerate(table.column(text_column).to_pylist())]
    return texts, table.column(label_column).to_pylist() if label_column is not None else None


def _text_value(value: Any, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path} {where}: the text column holds {type(value).__name__}, not a string")
    return value


def _missing_column(path: Path | str, column: str, present: list[str], where: str = "") -> str:
    return f"column {column!r} is not in {path}{where}; columns present: {', '.join(map(str, present)) or '(none)'}"


def _label_ids(values: list[Any], column: str | None, path: str) -> tuple[torch.Tensor, list[str]]:
    """Label ids and names: strings are numbered in sorted order; non-negative integers are kept as they are."""
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        lookup = {name: i for i, name in enumerate(names)}
        return torch.tensor([lookup[v] for v in values], dtype=torch.int64), names
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ids = torch.tensor(values, dtype=torch.int64)
        if ids.min() < 0:
            raise ConfigError(f"label column {column!r} of {path} holds negative integers; labels must be >= 0")
        return ids, [str(i) for i in range(int(ids.max()) + 1)]
    bad = next(i for i, v in enumerate(values) if not isinstance(v, str | int) or isinstance(v, bool))
    kinds = sorted({type(v).__name__ for v in values})
    raise ConfigError(
        f"label column {column!r} of {path} must hold only strings or only integers; found {', '.join(kinds)} "
        f"(first odd value at sample {bad}: {values[bad]!r})"
    )


# ----- images ------------------------------------------------------------------------------------------
def _image_folder(folder: Path) -> Dataset:
    """Class subfolders (sorted) give the labels; a folder of images alone gives an unlabelled dataset."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _image_files(folder)
    if classes and loose:
        raise ConfigError(
            f"image folder {folder} holds both images ({loose[0].name}, ...) and class subfolders; "
            "put every image in a class subfolder, or use a folder of images only"
        )
    if not classes:
        if not loose:
            raise ConfigError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return Dataset("image", str(folder), len(loose), None, None, _files=loose)
    files: list[Path] = []
    labels: list[int] = []
    for label, sub in enumerate(classes):
        found = _image_files(sub)
        files += found
        labels += [label] * len(found)
    if not files:
        raise ConfigError(f"the class subfolders of {folder} hold no images ({', '.join(IMAGE_SUFFIXES)})")
    ids = torch.tensor(labels, dtype=torch.int64)
    return Dataset("image", str(folder), len(files), ids, [p.name for p in classes], _files=files)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _decode_files(files: Sequence[Path]) -> list[Any]:
    """Decoded RGB images, None for a file that fails; decoding runs in threads (PIL releases the GIL)."""
    if len(files) <= 1:
        return [_open_image(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        return list(pool.map(_open_image, files))


def _open_image(file: Path) -> Any:
    from PIL import Image

    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _to_rgb(image: Any) -> Any:
    try:
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, AttributeError):
        return None


def _decoded(images: list[Any], start: int) -> Samples:
    keep = [i for i, image in enumerate(images) if image is not None]
    index = torch.tensor(keep, dtype=torch.int64) + start
    return Samples([images[i] for i in keep], index, len(images) - len(keep))


# ----- hub (optional `datasets` package) ------------------------------------------------------------------
def _hub_dataset(name: str, text_column: str, label_column: str | None, split: str) -> Dataset:
    if importlib.util.find_spec("datasets") is None:
        raise ConfigError(
            f"data {name!r} is not a local file or folder; to read it as a hub dataset `pip install datasets`, "
            f"or give {FORMATS_HELP}"
        )
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub raises many kinds; the user needs the first line only
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot load hub dataset {name!r} (split {split!r}): {first}") from None
    features = ds.features
    image_columns = [c for c, f in features.items() if type(f).__name__ == "Image"]
    column = image_columns[0] if image_columns and text_column not in features else text_column
    for wanted in (column, label_column):
        if wanted is not None and wanted not in features:
            raise ConfigError(_missing_column(name, wanted, list(features)))
    labels = names = None
    if label_column is not None:
        values = list(ds[label_column])
        names_of = getattr(features[label_column], "names", None)
        if names_of is not None:
            labels, names = torch.tensor(values, dtype=torch.int64), list(names_of)
        else:
            labels, names = _label_ids(values, label_column, name)
    kind: Literal["text", "image"] = "image" if column in image_columns else "text"
    return Dataset(kind, name, len(ds), labels, names, _hub=ds, _hub_column=column)
