import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from wtivision.errors import ImageError
from wtivision.media import Limits, load_image


def _exif_jpeg(path, orientation=6):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    im = Image.fromarray(img)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"
    exif[0x0132] = "2025:06:01 10:11:12"
    gps = {1: "S", 2: (1.0, 30.0, 0.0), 3: "E", 4: (29.0, 15.0, 36.0)}
    exif[0x8825] = gps
    im.save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_in_memory_only_and_metadata(tmp_path):
    p = _exif_jpeg(tmp_path / "o.jpg")
    before = p.read_bytes()
    li = load_image(p)
    assert p.read_bytes() == before  # original untouched
    assert (li.width, li.height) == (20, 40)  # rotated by orientation 6
    assert li.capture.orientation == 6 and li.capture.make == "TestCam"
    assert li.capture.datetime_original == "2025:06:01 10:11:12"
    assert li.capture.gps_latitude == pytest.approx(-1.5)
    assert li.capture.gps_longitude == pytest.approx(29.26)


def _png_header_only(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "empty"),
        (b"this is a text file\n", "not_image"),
        (_png_header_only(40000, 40000), "too_large"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path, data, code):
    p = tmp_path / "bad.jpg"
    p.write_bytes(data)
    with pytest.raises(ImageError) as ei:
        load_image(p)
    assert ei.value.code == code


def test_truncated_jpeg_and_size_limit(tmp_path):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    p = tmp_path / "t.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as ei:
        load_image(p)
    assert ei.value.code in ("truncated", "corrupt")
    p.write_bytes(buf.getvalue())
    with pytest.raises(ImageError) as ei:
        load_image(p, Limits(max_bytes=100))
    assert ei.value.code == "too_large" and len(ei.value.sha256) == 64


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("TIFF", "tif"), ("WEBP", "webp"), ("BMP", "bmp"),
                                        ("JPEG", "jpg")])
def test_formats(tmp_path, fmt, suffix):
    img = np.zeros((30, 50, 3), np.uint8)
    img[..., 2] = 200  # red in RGB
    p = tmp_path / f"x.{suffix}"
    Image.fromarray(img).save(p, format=fmt)
    li = load_image(p)
    assert li.array.shape == (30, 50, 3) and li.format == fmt
    assert li.array[..., 0].mean() > 150  # BGR: blue channel carries RGB's third channel


def test_16bit_grayscale_png(tmp_path):
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    li = load_image(p)
    assert li.array.shape == (64, 64, 3) and li.array.dtype == np.uint8 and li.array.max() == 255


def test_not_an_image_even_when_pil_open_is_patched(tmp_path, monkeypatch):
    """ultralytics replaces PIL.Image.open process-wide; a bad file must still give a clear error."""
    import PIL.Image

    real_open = PIL.Image.open

    def patched_open(fp, *a, **k):
        try:
            return real_open(fp, *a, **k)
        except PIL.UnidentifiedImageError:
            import pi_heif_not_installed  # noqa: F401  (what ultralytics' patch does without pi_heif)

    monkeypatch.setattr(PIL.Image, "open", patched_open)
    p = tmp_path / "notes.jpg"
    p.write_text("text, not pixels")
    with pytest.raises(ImageError) as ei:
        load_image(p)
    assert ei.value.code == "not_image"
