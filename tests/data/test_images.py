import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.data.images import ImageSource, load_image


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: orientation and cropping are visible in the result."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return Image.fromarray(pixels)


def test_large_jpeg_is_centre_cropped_and_resized_to_exactly_the_size() -> None:
    image = load_image(encode(gradient(3000, 2000)), 512)
    assert image.size == (512, 512) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels[256, 10, 0] > 200 and pixels[256, 500, 2] > 200  # centre crop keeps both halves


def test_reduced_scale_decode_matches_a_full_decode() -> None:
    rng = np.random.default_rng(0)
    texture = Image.fromarray((rng.random((200, 300, 3)) * 255).astype(np.uint8)).resize((3000, 2000))
    data = encode(texture, quality=95)
    fast = np.asarray(load_image(data, 256), dtype=float)
    with Image.open(io.BytesIO(data)) as full:
        reference = np.asarray(full.convert("RGB").crop((500, 0, 2500, 2000)).resize((256, 256), Image.BOX), float)
    psnr = 10 * np.log10(255**2 / np.mean((fast - reference) ** 2))
    assert psnr > 30


def test_exif_orientation_is_honoured() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image = load_image(encode(gradient(120, 80), exif=exif.tobytes()), 64)
    pixels = np.asarray(image)
    assert pixels[5, 32, 0] > 200 and pixels[60, 32, 2] > 200  # red now on top, blue at the bottom


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (50, 40), (255, 0, 0, 0)),
        Image.new("L", (50, 40), 128),
        Image.new("CMYK", (50, 40), (0, 255, 255, 0)),
        Image.new("P", (50, 40), 3),
    ],
    ids=["rgba", "gray", "cmyk", "palette"],
)
def test_any_mode_becomes_rgb(image: Image.Image) -> None:
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    result = load_image(encode(image, fmt), 32)
    assert result.mode == "RGB" and result.size == (32, 32)


def test_transparent_pixels_are_flattened_onto_white() -> None:
    result = load_image(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"), 32)
    assert np.asarray(result).min() == 255


def test_sixteen_bit_png_is_rescaled_not_clipped() -> None:
    pixels = np.full((40, 40), 32768, dtype=np.uint16)
    result = np.asarray(load_image(encode(Image.fromarray(pixels), "PNG"), 32))
    assert 120 <= result.mean() <= 135


def test_small_images_are_cropped_but_not_upscaled() -> None:
    assert load_image(encode(gradient(60, 40)), 512).size == (40, 40)


@pytest.mark.parametrize(("data", "reason"), [(b"", "empty"), (b"hello", "not a JPEG or PNG"), (None, "cannot decode")])
def test_unreadable_bytes_raise_a_short_reason(data: bytes | None, reason: str) -> None:
    if data is None:
        data = encode(gradient(300, 200))[:400]  # truncated JPEG
    with pytest.raises(ValueError, match=reason):
        load_image(data, 64)


def test_folder_source_indexes_recursively_by_stem(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(encode(gradient(20, 20)))
    (tmp_path / "sub" / "B.PNG").write_bytes(encode(gradient(20, 20), "PNG"))
    (tmp_path / "sub" / "a.png").write_bytes(encode(gradient(20, 20), "PNG"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    found, problems = ImageSource(tmp_path).index()
    assert found == {"a": "a.jpg", "B": "sub/B.PNG"}
    assert len(problems) == 1 and "also at" in problems[0]


def test_zip_source_reads_members_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "ISIC_2020_Training_JPEG.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("train/ISIC_1.jpg", encode(gradient(30, 20)))
        handle.writestr("__MACOSX/train/._ISIC_1.jpg", b"junk")
    source = ImageSource(archive)
    found, _ = source.index()
    assert found == {"ISIC_1": "train/ISIC_1.jpg"}
    assert load_image(source.read_bytes(found["ISIC_1"]), 16).size == (16, 16)
    assert source.name == "ISIC_2020_Training_JPEG"


def test_tiny_images_are_prepared() -> None:
    assert load_image(encode(Image.new("RGB", (1, 1), (200, 50, 50)), "PNG"), 64).size == (1, 1)


def test_isic_sized_originals_are_allowed() -> None:
    assert load_image(encode(Image.new("RGB", (6000, 4000), (180, 120, 90))), 512).size == (512, 512)


def test_decompression_bombs_are_refused_with_a_clear_reason(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # stands in for Pillow's ~89-megapixel limit
    with pytest.raises(ValueError, match="refused as a possible decompression bomb"):
        load_image(encode(Image.new("RGB", (150, 100))), 64)  # over the limit: Pillow would only warn
    with pytest.raises(ValueError, match="refused as a possible decompression bomb"):
        load_image(encode(Image.new("RGB", (300, 300)), "PNG"), 64)  # over twice the limit: Pillow's own error
