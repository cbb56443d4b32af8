"""imaging: every odd input becomes RGB of the right size, or a typed error a user understands."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from visionloop import imaging
from visionloop.imaging import (
    CenterCrop,
    CorruptImage,
    ImageLimits,
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
    UnsupportedFormat,
)

CROP = CenterCrop(short_side=256, height=224, width=224)
LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def halves(size=(200, 100), first=(255, 0, 0), second=(0, 0, 255)) -> Image.Image:
    """Left half ``first``, right half ``second``."""
    image = Image.new("RGB", size, second)
    image.paste(Image.new("RGB", (size[0] // 2, size[1]), first), (0, 0))
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries (almost) no pixels: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name", ["cat_chelsea.png", "dog_german_shepherd.webp", "neither_coffee.png"]
)
def test_prepare_returns_model_sized_uint8_rgb(sample_bytes, name):
    array = imaging.prepare(sample_bytes[name], CROP, LIMITS)
    assert array.shape == (224, 224, 3)
    assert array.dtype == np.uint8


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),
        ("BMP", {}),
    ],
)
def test_each_supported_format_decodes(fmt, kwargs):
    data = encode(halves(), fmt, **kwargs)
    assert imaging.sniff_format(data) == fmt
    image = imaging.decode(data, LIMITS)
    assert image.mode == "RGB"
    assert image.size == (200, 100)
    assert image.getpixel((10, 50))[0] > 200  # red on the left
    assert image.getpixel((190, 50))[2] > 200  # blue on the right


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    image = imaging.decode(buffer.getvalue(), LIMITS)
    assert image.getpixel((16, 16)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode(halves(), "JPEG", quality=95, exif=exif.tobytes())
    image = imaging.decode(data, LIMITS)
    assert image.size == (100, 200)
    assert image.getpixel((50, 10))[0] > 200  # the stored left (red) is now on top
    assert image.getpixel((50, 190))[2] > 200


def test_grayscale_becomes_rgb():
    image = imaging.decode(encode(Image.new("L", (8, 8), 128), "PNG"), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    image = imaging.decode(encode(rgba, "PNG"), LIMITS)
    assert image.getpixel((4, 4)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_palette_with_transparency_is_composited_on_white():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    image = imaging.decode(encode(palette, "PNG", transparency=0), LIMITS)
    assert image.getpixel((4, 4)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    image = imaging.decode(encode(cmyk, "JPEG", quality=95), LIMITS)
    red, green, blue = image.getpixel((8, 8))
    assert red > 200
    assert green < 60
    assert blue < 60


@pytest.mark.parametrize(("value16", "value8"), [(65535, 255), (32896, 128), (0, 0)])
def test_sixteen_bit_is_scaled_not_clipped(value16, value8):
    deep = Image.fromarray(np.full((8, 8), value16, dtype=np.uint16))
    data = encode(deep, "PNG")
    image = imaging.decode(data, LIMITS)
    assert image.getpixel((0, 0)) == (value8, value8, value8)


def test_large_jpeg_is_reduced_on_decode_and_matches_full_decode():
    photo = halves(size=(2400, 1600)).resize((2400, 1600))
    data = encode(photo, "JPEG", quality=90)
    reduced = imaging.decode(data, LIMITS, min_short_side=256)
    assert min(reduced.size) >= 256
    assert reduced.size[0] < 2400  # decoded at a reduced DCT scale
    fast = imaging.center_crop(reduced, CROP).astype(np.int16)
    exact = imaging.center_crop(imaging.decode(data, LIMITS), CROP).astype(np.int16)
    assert np.abs(fast - exact).mean() < 2.0


def test_center_crop_equals_resize_then_crop(sample_bytes):
    image = Image.open(io.BytesIO(sample_bytes["neither_coffee.png"])).convert("RGB")  # 600 x 400
    ours = imaging.center_crop(image, CROP).astype(np.int16)
    resized = image.resize((384, 256), Image.Resampling.BICUBIC)
    left = (384 - 224) // 2
    reference = np.asarray(resized.crop((left, 16, left + 224, 240))).astype(np.int16)
    assert np.abs(ours - reference).mean() < 0.5


def test_tiny_image_is_upscaled():
    assert imaging.prepare(
        encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), CROP, LIMITS
    ).shape == (224, 224, 3)


def test_empty_body_is_not_an_image():
    with pytest.raises(NotAnImage, match="not an image: the body is empty"):
        imaging.prepare(b"", CROP, LIMITS)


def test_text_is_not_an_image():
    with pytest.raises(NotAnImage, match=r"^not an image"):
        imaging.prepare(b"hello, this is a text file" * 10, CROP, LIMITS)


def test_bm_prefixed_text_is_not_a_bmp():
    with pytest.raises(NotAnImage):
        imaging.sniff_format(b"BMW is a car maker, not a bitmap header at all")


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"II*\x00" + b"\x00" * 64, "TIFF"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32, "HEIC"),
        (b"%PDF-1.7", "PDF"),
    ],
)
def test_known_other_formats_are_unsupported(data, name):
    with pytest.raises(UnsupportedFormat, match=f"unsupported image format: {name}"):
        imaging.prepare(data, CROP, LIMITS)


def test_truncated_jpeg(sample_bytes):
    data = encode(Image.open(io.BytesIO(sample_bytes["cat_chelsea.png"])).convert("RGB"), "JPEG")
    with pytest.raises(TruncatedImage, match=r"^truncated JPEG"):
        imaging.prepare(data[: len(data) // 2], CROP, LIMITS)


def test_truncated_png(sample_bytes):
    data = sample_bytes["neither_coffee.png"]
    with pytest.raises(CorruptImage):
        imaging.prepare(data[: len(data) // 2], CROP, LIMITS)


def test_garbage_after_a_png_signature_is_corrupt():
    with pytest.raises(CorruptImage, match="not a valid PNG file"):
        imaging.prepare(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, CROP, LIMITS)


def test_too_many_bytes_is_refused_before_parsing():
    with pytest.raises(
        ImageTooLarge, match="image too large: 101 bytes exceeds the limit of 100 bytes"
    ):
        imaging.prepare(b"\xff\xd8\xff" + b"\x00" * 98, CROP, ImageLimits(max_bytes=100))


def test_decompression_bomb_is_refused_from_the_header():
    bomb = png_header_only(8_000, 8_000)  # 64 M pixels: over our 50 M, under Pillow's guard
    assert len(bomb) < 100
    with pytest.raises(ImageTooLarge, match="image too large: 8000 x 8000 exceeds 50000000 pixels"):
        imaging.prepare(bomb, CROP, LIMITS)


def test_a_bomb_past_pillows_own_guard_gets_our_error_too():
    bomb = png_header_only(40_000, 40_000)
    with pytest.raises(
        ImageTooLarge, match=r"image too large: 1600000000 pixels exceeds 50000000 pixels"
    ):
        imaging.prepare(bomb, CROP, LIMITS)


def test_pillows_process_wide_guard_stays_on():
    """Importing visionloop must not switch off Pillow's guard for every other image opener."""
    assert Image.MAX_IMAGE_PIXELS is not None
    assert LIMITS.max_pixels <= Image.MAX_IMAGE_PIXELS  # ours is the lower, so it speaks first


def test_a_file_is_size_checked_before_it_is_read(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.new("RGB", (64, 64)), "PNG") + b"\0" * 1000)
    with pytest.raises(ImageTooLarge, match=r"big\.png: .* exceeds the limit of 500 bytes"):
        imaging.open_path(big, ImageLimits(max_bytes=500))


def test_a_bomb_file_is_refused_by_name_and_keeps_its_mode(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(8_000, 8_000))
    with pytest.raises(ImageTooLarge, match=r"bomb\.png: image too large: 8000 x 8000"):
        imaging.open_path(bomb, LIMITS)
    mask = tmp_path / "mask.png"
    Image.new("L", (5, 4), 255).save(mask)
    opened = imaging.load_path(mask, LIMITS)
    assert (opened.mode, opened.size) == ("L", (5, 4))


def test_pixel_limit_is_a_setting():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="100 x 100 exceeds 5000 pixels"):
        imaging.prepare(data, CROP, ImageLimits(max_pixels=5000))


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"max_pixels": -1}])
def test_limits_are_validated(kwargs):
    with pytest.raises(ValueError, match="must be >= 1"):
        ImageLimits(**kwargs)


def test_crop_larger_than_short_side_is_rejected():
    with pytest.raises(ValueError, match="short_side must be >= the crop size"):
        CenterCrop(short_side=200, height=224, width=224)


def test_an_unreadable_exif_block_leaves_the_photo_as_stored():
    exif = Image.Exif()
    exif[0x0112] = 6
    # With a JFIF density unit, Pillow does not parse the EXIF block while opening the file
    # (where it would swallow the error), so it fails later, in exif_transpose.
    data = encode(halves(), "JPEG", quality=95, exif=exif.tobytes(), dpi=(96, 96))
    broken = data.replace(b"Exif\x00\x00MM", b"Exif\x00\x00M\xca", 1)  # not a TIFF header
    assert broken != data
    image = imaging.decode(broken, LIMITS)  # Pillow's SyntaxError escaped from here
    assert image.size == (200, 100)  # orientation unknown: not rotated
    assert imaging.prepare(broken, CROP, LIMITS).shape == (224, 224, 3)


def test_exif_that_pillow_cannot_rewrite_still_rotates_the_photo():
    # Orientation 6, and Make (an ASCII tag) stored as a RATIONAL: Pillow reads it, rotates,
    # then fails to write the block back without the orientation (AttributeError).
    entries = [(0x010F, 5, 1, struct.pack(">I", 38)), (0x0112, 3, 1, struct.pack(">HH", 6, 0))]
    ifd = struct.pack(">H", len(entries))
    ifd += b"".join(
        struct.pack(">HHI", tag, kind, count) + value for tag, kind, count, value in entries
    )
    tiff = b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + struct.pack(">II", 1, 2)
    data = encode(halves(), "JPEG", quality=95, exif=b"Exif\x00\x00" + tiff)
    image = imaging.decode(data, LIMITS)
    assert image.size == (100, 200)
    assert image.getpixel((50, 10))[0] > 200


def test_upright_keeps_a_photo_with_unreadable_exif_for_datasets_and_reports(tmp_path):
    """The label and train paths keep the image (not only its pixels) and go through
    upright(): a corrupt EXIF block must not fail them either."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves(), "JPEG", quality=95, exif=exif.tobytes(), dpi=(96, 96))
    broken = data.replace(b"Exif\x00\x00MM", b"Exif\x00\x00M\xca", 1)
    path = tmp_path / "broken.jpg"
    path.write_bytes(broken)
    assert imaging.upright(imaging.load_path(path, LIMITS)).size == (200, 100)
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(encode(halves(), "JPEG", quality=95, exif=exif.tobytes()))
    assert imaging.upright(imaging.load_path(rotated, LIMITS)).size == (100, 200)


def _broken_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves(), "JPEG", quality=95, exif=exif.tobytes(), dpi=(96, 96))
    return data.replace(b"Exif\x00\x00MM", b"Exif\x00\x00M\xca", 1)


@pytest.mark.parametrize(("tag", "shown"), [(None, (200, 100)), (1, (200, 100)), (3, (200, 100)),
                                             (6, (100, 200)), (8, (100, 200))])  # fmt: skip
def test_the_size_as_shown_applies_a_quarter_turn_only(tmp_path, tag, shown):
    exif = Image.Exif()
    if tag is not None:
        exif[0x0112] = tag
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(halves(), "JPEG", quality=95, exif=exif.tobytes()))
    with imaging.open_path(path, LIMITS) as image:
        assert imaging.orientation(image) == (tag or 1)
        assert imaging.shown_size(image) == shown


def test_the_size_as_shown_of_a_photo_with_unreadable_exif_is_as_stored(tmp_path):
    """The label loop sizes tasks from the header: a corrupt EXIF block used to raise there."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(_broken_exif_jpeg())
    with imaging.open_path(path, LIMITS) as image:
        assert imaging.orientation(image) == 1
        assert imaging.shown_size(image) == (200, 100)
