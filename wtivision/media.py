"""Reading originals as evidence: hash the bytes, decode in memory, never write.

``load_image`` reads the file's bytes once, computes their SHA-256, checks size and
pixel limits *before* decoding (decompression bombs), applies EXIF orientation in
memory only and extracts capture metadata. Anything that is not a readable image
raises :class:`~wtivision.errors.ImageError` with a short ``code``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError
from .results import CaptureMetadata

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".bmp", ".dib"}
)
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "WEBP", "BMP", "MPO"})


@dataclass(frozen=True)
class Limits:
    """Refuse files larger than ``max_bytes`` or images of more than ``max_pixels``."""

    max_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 120_000_000  # ~ 12000 x 10000, above any camera in the field


@dataclass
class LoadedImage:
    """An original's decoded pixels (BGR uint8, orientation applied) and its evidence facts."""

    array: np.ndarray
    sha256: str
    size_bytes: int
    format: str
    capture: CaptureMetadata = field(default_factory=CaptureMetadata)

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])


def is_candidate(path: str | os.PathLike[str]) -> bool:
    """Whether a scan should look at this file (by suffix, case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def read_original(path: str | os.PathLike[str], limits: Limits = Limits()) -> tuple[bytes, str]:
    """Read the file's bytes (read-only) and return them with their SHA-256."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"file not found: {p}", "missing") from None
    except OSError as exc:
        raise ImageError(f"cannot stat {p}: {exc}", "io_error") from exc
    if size == 0:
        exc = ImageError("file is empty (0 bytes)", "empty")
        exc.sha256 = hashlib.sha256(b"").hexdigest()  # type: ignore[attr-defined]
        raise exc
    if size > limits.max_bytes:
        exc = ImageError(f"file is {size} bytes, over the limit of {limits.max_bytes}", "too_large")
        try:  # still fingerprint the refused original, streaming, without holding it in memory
            from .registry import sha256_file

            exc.sha256 = sha256_file(p)  # type: ignore[attr-defined]
        except OSError:
            pass
        exc.size_bytes = size  # type: ignore[attr-defined]
        raise exc
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageError(f"cannot read {p}: {exc}", "io_error") from exc
    return data, hashlib.sha256(data).hexdigest()


def _ratio(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        num, den = value
        return float(num) / float(den)


def _gps_degrees(dms, ref) -> float | None:
    try:
        d, m, s = (_ratio(v) for v in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    deg = d + m / 60.0 + s / 3600.0
    if str(ref).upper() in ("S", "W"):
        deg = -deg
    return round(deg, 7)


def capture_metadata(pil_image) -> CaptureMetadata:
    """Capture metadata from a PIL image's EXIF (best effort; bad EXIF is logged, not fatal)."""
    from PIL import ExifTags

    meta = CaptureMetadata()
    try:
        exif = pil_image.getexif()
    except Exception as exc:  # malformed EXIF must not lose the photo
        logger.warning("unreadable EXIF: %s", exc)
        return meta
    if not exif:
        return meta
    base = dict(exif)
    try:
        sub = dict(exif.get_ifd(ExifTags.IFD.Exif))
    except Exception:
        sub = {}
    tags = {**base, **sub}
    names = {ExifTags.TAGS.get(k, str(k)): v for k, v in tags.items()}
    meta.datetime_original = str(names.get("DateTimeOriginal") or names.get("DateTime") or "").strip("\x00 ")
    meta.make = str(names.get("Make", "")).strip("\x00 ")
    meta.model = str(names.get("Model", "")).strip("\x00 ")
    meta.software = str(names.get("Software", "")).strip("\x00 ")
    try:
        meta.orientation = int(names.get("Orientation", 1) or 1)
    except (TypeError, ValueError):
        meta.orientation = 1
    for key in ("OffsetTimeOriginal", "SubsecTimeOriginal", "LensModel", "BodySerialNumber",
                "ExposureTime", "FNumber", "ISOSpeedRatings", "FocalLength", "ImageUniqueID"):
        if key in names:
            meta.exif[key] = str(names[key]).strip("\x00 ")[:200]
    try:
        gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo))
    except Exception:
        gps = {}
    if gps:
        g = {ExifTags.GPSTAGS.get(k, str(k)): v for k, v in gps.items()}
        if "GPSLatitude" in g and "GPSLongitude" in g:
            meta.gps_latitude = _gps_degrees(g["GPSLatitude"], g.get("GPSLatitudeRef", "N"))
            meta.gps_longitude = _gps_degrees(g["GPSLongitude"], g.get("GPSLongitudeRef", "E"))
        if "GPSAltitude" in g:
            try:
                alt = _ratio(g["GPSAltitude"])
                meta.gps_altitude = -alt if g.get("GPSAltitudeRef") in (1, b"\x01") else alt
            except (TypeError, ValueError, ZeroDivisionError):
                pass
    return meta


def decode(data: bytes, limits: Limits = Limits()) -> tuple[np.ndarray, str, CaptureMetadata]:
    """Decode image bytes to BGR uint8 with EXIF orientation applied, in memory."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or ""
            if fmt not in SUPPORTED_FORMATS:
                raise ImageError(f"unsupported image format {fmt or 'unknown'}", "unsupported")
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"image header claims {w}x{h} pixels", "corrupt")
            if w * h > limits.max_pixels:
                raise ImageError(
                    f"image header claims {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
                    "too_large",
                )
            meta = capture_metadata(im)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("RGB", "L"):
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr16 = np.asarray(im, dtype=np.float64)
                    peak = max(float(arr16.max()), 1.0)
                    im = Image.fromarray((arr16 * (255.0 / peak)).astype(np.uint8))
                else:
                    im = im.convert("RGB")
            arr = np.asarray(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (no known image signature)", "not_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}", "too_large") from None
    except OSError as exc:
        msg = str(exc)
        code = "truncated" if "truncated" in msg.lower() else "corrupt"
        raise ImageError(f"cannot decode image: {msg}", code) from None
    except (ValueError, SyntaxError, MemoryError, EOFError) as exc:
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}", "corrupt") from None
    except Exception as exc:
        # Other libraries patch PIL.Image.open process-wide (ultralytics retries unknown files with an
        # optional HEIF plug-in and raises ImportError when it is absent): a bad photo must still become
        # an error row, never an exception that stops a batch.
        if isinstance(exc.__context__, UnidentifiedImageError):
            raise ImageError("not an image (no known image signature)", "not_image") from None
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}", "corrupt") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    bgr = np.ascontiguousarray(arr[:, :, ::-1])
    return bgr, fmt, meta


def load_image(path: str | os.PathLike[str], limits: Limits = Limits()) -> LoadedImage:
    """Read, hash and decode an original. The file is opened read-only and never written."""
    data, digest = read_original(path, limits)
    return load_image_bytes(data, limits, digest)


def load_image_bytes(data: bytes, limits: Limits = Limits(), sha256: str | None = None) -> LoadedImage:
    """Decode an original already read into memory (``sha256`` of ``data`` if known)."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    if not data:
        exc = ImageError("file is empty (0 bytes)", "empty")
        exc.sha256 = digest  # type: ignore[attr-defined]
        raise exc
    try:
        array, fmt, meta = decode(data, limits)
    except ImageError as exc:
        exc.sha256 = digest  # type: ignore[attr-defined]
        exc.size_bytes = len(data)  # type: ignore[attr-defined]
        raise
    return LoadedImage(array=array, sha256=digest, size_bytes=len(data), format=fmt, capture=meta)
