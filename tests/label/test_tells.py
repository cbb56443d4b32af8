"""An adversary with the export alone tries to tell honeypots from normal tasks, and must do no
better than chance, as far as the test can tell.

The world is built to make it easy: the pool is phone photos (JPEG with EXIF, under a dated
folder, named IMG_nnnn.jpg) and the gold is a dataset (lossless PNG, named by number, under
gold/); the model draws coarse outlines (a stride-4 decoder) where the gold is drawn by hand,
and makes a coarse model's mistakes (too fat, too thin, an object missed, a ghost), none of
them a spoiling. The adversary reads every reference the export makes (the image's name and
URL, the task id and its place in the file, the image's size, file size as served, format and
EXIF, how many annotators the task wants) and the drawing style of the pre-label shown
(compactness, corner roughness, how far the outline is from the model's own coarse drawing).
It does not parse the JPEG under its padding, nor look at the pixels: the README says what
those still give away. Two controls show it sees a plain tell: the original paths, and baits
that show the spoiled gold itself (what they showed before), are both picked out.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier
from sqlalchemy import select

from visionloop.label import loop
from visionloop.label.masks import brush_decode, coco_decode, label_from_json
from visionloop.label.media import media_folder
from visionloop.label.spoil import spoil
from visionloop.label.store import Image, Task, open_store
from visionloop.train.synth import synthesize

N, SIZE = 100, 64  # normal tasks, and as many honeypots
CLASSES = ("cat", "animal")
CHANCE_P = 1e-3  # a feature whose two distributions differ this surely is a tell
MAX_ACCURACY = 0.66  # cross-validated, the best of ~20 classifiers on 200 tasks: chance
# alone reaches about 0.6, a plain tell 0.95 or more; a weak one could stay under it


def coarse(mask: np.ndarray) -> np.ndarray:
    """How the model draws: the mask at 1/4 of the resolution, scaled back up."""
    small = mask.reshape(SIZE // 4, 4, SIZE // 4, 4).mean(axis=(1, 3))
    return np.asarray(ndimage.zoom(small, 4, order=1) > 0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tells")
    synthesize(tmp / "camera", N, size=SIZE, seed=1)
    synthesize(tmp / "gold", N, size=SIZE, seed=2)
    photos = tmp / "DCIM" / "2026" / "11"
    photos.mkdir(parents=True)
    truth = {}
    for n, png in enumerate(sorted((tmp / "camera" / "images").iterdir())):
        exif = PILImage.Exif()
        exif[0x010F], exif[0x0112] = "Phone", 1  # make, orientation
        photo = photos / f"IMG_{n:04d}.jpg"
        PILImage.open(png).convert("RGB").save(photo, quality=85, exif=exif)
        truth[photo.name] = {c: _mask(tmp / "camera", c, png.name) for c in CLASSES}
    for png in sorted((tmp / "gold" / "images").iterdir()):
        truth[png.name] = {c: _mask(tmp / "gold", c, png.name) for c in CLASSES}

    def model(paths):
        out = []
        for path in paths:
            rng = np.random.default_rng(zlib.crc32(Path(path).name.encode()))
            label = {c: coarse(m) for c, m in truth[Path(path).name].items()}
            label["animal"] |= label["cat"]
            if rng.random() < 0.4:  # a model's error on 40 % of images, drawn as it draws
                label = model_error(label, truth[Path(path).name], rng, list(truth.values()))
            out.append(label)
        return out

    store = open_store(f"sqlite:///{tmp / 'labels.db'}")
    loop.add_images(store, photos)
    loop.add_gold(store, tmp / "gold")
    loop.mark_selected(store, [(i, 1.0) for i, _ in loop.pool(store)], "all")
    loop.prelabel(store, model)
    loop.make_batch(store, "b", N, honeypot_share=0.5, overlap_share=0.3, min_object=0)
    with store.session() as s:
        tasks = {t.id: (t, i.path) for t, i in s.execute(select(Task, Image).join(Image))}
    return tmp, store, tasks


def model_error(label, truth, rng, others):
    """A coarse model's kind of mistake, none of them a spoiling: outlines too fat or too thin
    (another threshold), an object missed, or a ghost of an object from another picture."""
    kind = rng.integers(4)
    if kind < 2:
        cut = 0.25 if kind == 0 else 0.75
        out = {c: np.asarray(ndimage.zoom(m.reshape(SIZE // 4, 4, SIZE // 4, 4).mean(axis=(1, 3)),
                                          4, order=1) > cut) for c, m in truth.items()}  # fmt: skip
    elif kind == 2:
        out = {c: m.copy() for c, m in label.items()}
        parts, count = ndimage.label(out["animal"])
        if count:
            gone = parts == rng.integers(1, count + 1)
            out = {c: m & ~gone for c, m in out.items()}
    else:
        ghost = coarse(others[int(rng.integers(len(others)))]["animal"])
        ghost = np.roll(ghost, tuple(rng.integers(-SIZE // 4, SIZE // 4, 2)), axis=(0, 1))
        out = {c: m.copy() for c, m in label.items()}
        out[str(rng.choice(list(CLASSES)))] |= ghost
    out["animal"] |= out["cat"]
    return out


def _mask(root: Path, cls: str, name: str) -> np.ndarray:
    return np.asarray(PILImage.open(root / "masks" / cls / name)) > 0


def read_export(fmt: str, out: Path) -> list[tuple[int, str, int, dict[str, np.ndarray]]]:
    """(task, image reference, annotators wanted, pre-label) per task, in the file's order."""
    if fmt == "label-studio":
        rows = []
        for t in json.loads(out.read_text()):
            label = {
                r["value"]["brushlabels"][0]: brush_decode(
                    r["value"]["rle"], r["original_height"], r["original_width"]
                )
                for r in t["predictions"][0]["result"]
            }
            d = t["data"]
            rows.append((d["visionloop_task"], d["image"], d["visionloop_copies"], label))
        return rows
    if fmt == "coco":
        data = json.loads(out.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        labels: dict[int, dict[str, np.ndarray]] = {i["id"]: {} for i in data["images"]}
        for a in data["annotations"]:
            labels[a["image_id"]][names[a["category_id"]]] = coco_decode(a["segmentation"])
        return [(i["id"], i["file_name"], i["copies"], labels[i["id"]]) for i in data["images"]]
    with (out / "tasks.csv").open() as f:
        return [
            (int(r["task"]), r["image"], int(r["copies"]), {
                c: np.asarray(PILImage.open(out / "prelabels" / c / f"{r['task']}.png")) > 0
                for c in CLASSES
            })
            for r in csv.DictReader(f)
        ]  # fmt: skip


def style(mask: np.ndarray) -> list[float]:
    """Compactness, corner roughness, distance from the model's coarse drawing."""
    if not mask.any():
        return [0.0, 0.0, 0.0]
    perimeter = float((mask & ~ndimage.binary_erosion(mask)).sum())
    smooth = ndimage.binary_opening(ndimage.binary_closing(mask))
    return [
        perimeter**2 / (4 * np.pi * mask.sum()),
        float((mask ^ smooth).sum()) / perimeter,
        float((mask ^ coarse(mask)).sum()) / perimeter,
    ]


def styles(label: dict[str, np.ndarray]) -> list[float]:
    return [v for c in CLASSES for v in style(label.get(c, np.zeros((SIZE, SIZE), bool)))]


def file_features(ref: str, folder: Path) -> list[float]:
    """What the referenced file says: its name, its URL, its size on disk, format, EXIF."""
    name = ref.rsplit("/", 1)[-1]
    path = folder / name
    with PILImage.open(path) as image:
        facts = [image.width, image.height, len(image.getexif()), image.format == "PNG"]
    opaque = re.fullmatch(r"[0-9a-f]{16}\.jpg", name) is not None
    return [len(ref), len(name), opaque, int(name[0], 16) if opaque else -1,
            path.stat().st_size, *facts]  # fmt: skip


def judge(features: np.ndarray, bait: np.ndarray) -> tuple[float, float]:
    """The best cross-validated accuracy of a few classifiers (all features, and each alone),
    and the smallest Mann-Whitney p-value of a feature between baits and normal tasks."""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    models = [
        (DecisionTreeClassifier(max_depth=3, random_state=0), slice(None)),
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), slice(None)),
        *((DecisionTreeClassifier(max_depth=1), [j]) for j in range(features.shape[1])),
    ]
    best = max(cross_val_score(m, features[:, cols], bait, cv=folds).mean() for m, cols in models)
    p_values = [
        mannwhitneyu(features[bait, j], features[~bait, j]).pvalue
        for j in range(features.shape[1])
        if np.ptp(features[:, j]) > 0
    ]
    print(f"accuracy {best:.3f}, smallest p {min(p_values, default=1.0):.2g}")
    return float(best), float(min(p_values, default=1.0))


FORMATS = [
    ("label-studio", "https://cdn.example/b1"),
    ("coco", "/data/local-files/?d=b1"),
    ("png", ""),
]


@pytest.mark.parametrize(("fmt", "prefix"), FORMATS)
def test_an_export_alone_does_not_tell_the_honeypots(world, fmt, prefix):
    tmp, store, tasks = world
    out = tmp / fmt / ("export" if fmt == "png" else "export.json")
    assert loop.export_batch(store, "b", fmt, out, prefix=prefix) == 2 * N
    media = media_folder(out, fmt)
    rows = read_export(fmt, out)
    order = sorted(task for task, *_ in rows)
    features = np.array([
        [position, order.index(task), copies, *file_features(ref, media), *styles(label)]
        for position, (task, ref, copies, label) in enumerate(rows)
    ], dtype=float)  # fmt: skip
    bait = np.array([tasks[task][0].kind == "honeypot" for task, *_ in rows])
    assert bait.sum() == N
    accuracy, p = judge(features, bait)
    assert accuracy <= MAX_ACCURACY
    assert p > CHANCE_P

    # control 1: the references a batch used to carry (the original files) give baits away
    originals = [Path(tasks[task][1]) for task, *_ in rows]
    where = np.array([[*file_features(str(p), p.parent), len(str(p.parent))] for p in originals])
    accuracy, p = judge(where.astype(float), bait)
    assert accuracy >= 0.95
    assert p < 1e-9


def test_the_control_sees_hand_drawn_gold_shown_as_a_bait(world):
    """Control 2: had the baits shown the spoiled gold (as they once did) rather than the
    model's drawing spoiled, the drawing style alone would give them away."""
    _, _, tasks = world
    bait, drawn = [], []
    for task, _ in tasks.values():
        shown = label_from_json(task.prelabel)
        if task.kind == "honeypot":
            shown = spoil(label_from_json(task.gold), np.random.default_rng(task.id))[0]
        bait.append(task.kind == "honeypot")
        drawn.append(styles(shown))
    _, p = judge(np.array(drawn), np.array(bait))
    assert p < CHANCE_P
