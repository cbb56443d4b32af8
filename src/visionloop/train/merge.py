"""Merge segmentation datasets that were labelled for different classes into one, each image
annotated for exactly the classes its own dataset annotated.

The old images (``cat`` and ``animal``) and the new ones (``plane`` only) train one model: in
the merged ``labels.csv`` an old image says 0 for ``plane`` and a plane image 0 for ``cat`` and
``animal``, so the masked loss (:func:`visionloop.train.losses.masked_multilabel_bce`) takes no
loss on a class an image was not labelled for: the same "one if" as the partial-label study.

Every source is opened as a :class:`~visionloop.train.data.SegDataset` first (its names, masks
and guards checked), so a broken source fails before anything is written; the copy is made
beside ``out`` and renamed into place. Files are copied under new names, ``s<i>_<stem>``, so
two sources may use the same names; one source naming two images with the same stem (in two
subfolders) is refused, as their masks would share a file.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

from visionloop.train.data import DatasetError, SegDataset

__all__ = ["merge"]


def merge(out: Path, sources: Sequence[Path]) -> tuple[str, ...]:
    """Write the datasets ``sources`` as one dataset in ``out`` (a new or empty folder);
    returns its classes (in order of first appearance)."""
    if len(sources) < 2:
        raise DatasetError("merge needs at least two datasets")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: not empty; merge writes a new dataset")
    opened = [SegDataset(Path(s)) for s in sources]
    classes = tuple(dict.fromkeys(c for data in opened for c in data.classes))
    _check_unique(opened)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write(staging, opened, classes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty: checked above
    staging.rename(out)  # all or nothing: a failure above leaves no half-written dataset
    return classes


def _check_unique(opened: Sequence[SegDataset]) -> None:
    """Refuse a source naming two images with the same stem (a/x.png, b/x.png)."""
    seen: dict[str, Path] = {}
    for index, data in enumerate(opened):
        for sample in data.samples:
            stem = f"s{index}_{sample.stem}"
            if stem in seen:
                raise DatasetError(
                    f"{sample.image} and {seen[stem]} share the name {sample.stem!r}; their "
                    "masks would too (masks/<class>/<stem>.png): rename one"
                )
            seen[stem] = sample.image


def _write(folder: Path, opened: Sequence[SegDataset], classes: tuple[str, ...]) -> None:
    for name in ("images", *(f"masks/{c}" for c in classes)):
        (folder / name).mkdir(parents=True)
    rows = []
    for index, data in enumerate(opened):
        for sample in data.samples:
            stem = f"s{index}_{sample.stem}"
            name = f"{stem}{sample.image.suffix.lower()}"
            shutil.copyfile(sample.image, folder / "images" / name)
            annotated = dict(zip(data.classes, sample.annotated, strict=True))
            for c, mask in sample.masks.items():
                shutil.copyfile(mask, folder / "masks" / c / f"{stem}.png")
            rows.append([name, *("1" if annotated.get(c, False) else "0" for c in classes)])
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *classes])
        writer.writerows(rows)
