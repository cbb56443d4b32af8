"""Merge segmentation datasets that were labelled for different classes into one, each image
annotated for exactly the classes its own dataset annotated.

The old images (``cat`` and ``animal``) and the new ones (``plane`` only) train one model: in
the merged ``labels.csv`` an old image says 0 for ``plane`` and a plane image 0 for ``cat`` and
``animal``, so the masked loss (:func:`visionloop.train.losses.masked_multilabel_bce`) takes no
loss on a class an image was not labelled for: the same "one if" as the partial-label study.

Every source is opened as a :class:`~visionloop.train.data.SegDataset` first (its names, masks
and guards checked), so a broken source fails before anything is written. Files are copied
under new names, ``s<i>_<stem>``, so two sources may use the same names.
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
    for folder in ("images", *(f"masks/{c}" for c in classes)):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index, data in enumerate(opened):
        for sample in data.samples:
            stem = f"s{index}_{sample.stem}"
            name = f"{stem}{sample.image.suffix.lower()}"
            shutil.copyfile(sample.image, out / "images" / name)
            annotated = dict(zip(data.classes, sample.annotated, strict=True))
            for c, mask in sample.masks.items():
                shutil.copyfile(mask, out / "masks" / c / f"{stem}.png")
            rows.append([name, *("1" if annotated.get(c, False) else "0" for c in classes)])
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *classes])
        writer.writerows(rows)
    return classes
