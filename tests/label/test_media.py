"""An export's images: re-encoded upright without EXIF, padded to one size, all or nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from visionloop.label import media


def photo(path, size=(40, 30), orientation=None, fmt="JPEG"):
    rng = np.random.default_rng(len(str(path)))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if orientation is None:
        image.save(path, format=fmt)
    else:
        exif = Image.Exif()
        exif[0x0112], exif[0x010F] = orientation, "Phone"
        image.save(path, format=fmt, exif=exif)
    return path


def test_images_are_written_upright_without_exif_under_random_names_at_one_size(tmp_path):
    turned = photo(tmp_path / "IMG_0001.jpg", orientation=6)  # stored 40x30, shown 30x40
    plain = photo(tmp_path / "000001.png", fmt="PNG")
    names = media.write_media([(str(turned), (30, 40)), (str(plain), (40, 30))], tmp_path / "m")
    assert len(set(names)) == 2
    files = [tmp_path / "m" / n for n in names]
    assert len({f.stat().st_size for f in files}) == 1  # padded to one size
    assert files[0].stat().st_size % 4096 == 0
    for f, size in zip(files, [(30, 40), (40, 30)], strict=True):
        with Image.open(f) as image:
            assert image.format == "JPEG"
            assert image.size == size
            assert len(image.getexif()) == 0
            image.load()  # the padding does not stop it decoding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000001.png", "IMG_0001.jpg", "m"]


def test_padding_adds_comments_only_and_the_pixels_are_the_same():
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    for size in (len(data) + 4, len(data) + 5, len(data) + 65537, len(data) + 65538, 200_000):
        padded = media.pad(data, size)
        assert len(padded) == size
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(padded))), np.asarray(Image.open(io.BytesIO(data)))
        )
    assert media.pad(data, len(data)) == data
    with pytest.raises(ValueError, match="a comment takes 4 at least"):
        media.pad(data, len(data) + 3)
    with pytest.raises(ValueError, match="not a JPEG"):
        media.pad(b"\x89PNG....", 100)


def test_a_bad_image_or_a_used_folder_leaves_nothing_behind(tmp_path):
    good = photo(tmp_path / "a.jpg")
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"b\.jpg"):
        media.write_media([(str(good), (40, 30)), (str(bad), (40, 30))], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert not (tmp_path / "m.partial").exists()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        media.write_media([(str(good), (40, 30))], tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["old.jpg"]


def test_an_image_changed_since_it_was_added_is_refused(tmp_path):
    changed = photo(tmp_path / "a.jpg", size=(50, 30))
    with pytest.raises(ValueError, match="is 50x30 now, 40x30 when added"):
        media.write_media([(str(changed), (40, 30))], tmp_path / "m")


def test_sizes_only_honeypots_have_are_named():
    assert media.size_tells([(640, 480), (640, 480)], [(640, 480)]) == []
    tells = media.size_tells([(640, 480), (512, 512), (512, 512)], [(640, 480), (480, 640)])
    assert len(tells) == 1
    assert tells[0].startswith("2 honeypot(s) are 512x512, a size no normal task")
    assert media.size_tells([(512, 512)], []) == []  # a qualification batch: nothing to compare


def test_nothing_of_the_original_file_is_carried_over(tmp_path):
    source = tmp_path / "web.jpg"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(source, comment=b"CREATOR: gd-jpeg v1.0")
    data, size = media.encode(source, media.imaging.ImageLimits())
    assert size == (40, 30)
    assert b"CREATOR" not in data
    with Image.open(io.BytesIO(data)) as image:
        assert "comment" not in image.info
        assert "icc_profile" not in image.info


def test_a_size_far_more_common_among_honeypots_is_named():
    baits = [(512, 512)] * 4 + [(640, 480)] * 2
    normal = [(512, 512)] + [(640, 480)] * 30
    tells = media.size_tells(baits, normal)
    assert len(tells) == 1
    assert tells[0].startswith("4 of 6 honeypots are 512x512, against 1 of 31 normal tasks")
    assert media.size_tells([(512, 512)] * 2, normal) == []  # 2 are too few to point at
