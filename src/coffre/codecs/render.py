"""Rendering one frame of an image to an 8-bit JPEG or PNG (PS3.18 8.3.5, PS3.3 C.11).

This is the pixel pipeline behind WADO-RS ``/rendered`` and ``/thumbnail`` and the
rendered content types of WADO-URI. It is pure (bytes and arrays in, bytes out; no
index, storage or web code) and bounded.

Pipeline, for one frame (PS3.3 C.11, "Grayscale Image Consistency", PS3.4 N.2.1.1):

1. **region**: the source region of the ``viewport`` parameter is cropped first
   (PS3.18 8.3.5.1.3; a negative region width or height mirrors it);
2. **grayscale**: the *Modality LUT* (PS3.3 C.11.1): Rescale Slope/Intercept, or the
   Modality LUT Sequence; for an enhanced multi-frame object the Pixel Value
   Transformation of the frame's functional groups. Then the *VOI LUT* (PS3.3 C.11.2):
   the ``window`` parameter if given, else the object's first Window Center/Width
   (with its VOI LUT Function, the frame's Frame VOI LUT for enhanced objects), else its
   VOI LUT Sequence, else the range of the frame's values (min to max). Window
   functions follow PS3.3 C.11.2.1.2 (``LINEAR``) and C.11.2.1.3 (``LINEAR_EXACT``,
   ``SIGMOID``) with ``ymin = 0, ymax = 255``, rounded to the nearest integer.
   ``MONOCHROME1`` is inverted (0 is white, PS3.3 C.7.6.3.1.2);
3. **colour**: ``RGB`` as is (samples scaled to 8 bits when Bits Stored > 8),
   ``YBR_FULL``, ``YBR_FULL_422`` and ``YBR_PARTIAL_*`` converted to RGB (PS3.3
   C.7.6.3.1.2), ``PALETTE COLOR`` looked up in its (non-segmented) palette. VOI and
   ``window`` do not apply to colour images (PS3.3 C.11.2 is for grayscale);
4. **viewport**: scaled to the largest size that fits ``vw x vh`` keeping the aspect
   ratio (Lanczos resampling); without a viewport, the natural size;
5. **encoding**: JPEG baseline (``quality`` 1-100, default 90) or PNG (lossless,
   ``quality`` ignored) with Pillow.

Nothing is burnt into the pixels: no annotation, no patient text.

Bounds (DESIGN 4.5): a frame whose working size ``Rows x Columns x Samples x
max(bytes per sample, 4)`` (the pipeline works in 32-bit floats) or whose output
``width x height x samples`` passes ``max_decoded_bytes`` is refused with
:class:`~coffre.errors.TooLarge` before anything is decoded; only the requested frame
is decoded, never the whole object.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from coffre.dicom import part10, transfer_syntaxes
from coffre.dicom.instance import pydicom_guard
from coffre.errors import (
    BadRequest,
    CoffreError,
    InvalidInstance,
    NotAcceptable,
    TooLarge,
    TranscodeError,
)
from coffre.settings import LimitsSettings

__all__ = [
    "DEFAULT_QUALITY",
    "JPEG",
    "MEDIA_TYPES",
    "PNG",
    "Lut",
    "Presentation",
    "Region",
    "RelativeRegion",
    "RenderOptions",
    "Viewport",
    "VoiFunction",
    "Window",
    "apply_window",
    "decode_frame",
    "encode",
    "frame_count",
    "presentation_from_dataset",
    "render",
    "render_instance",
    "to_display",
]

JPEG = "image/jpeg"
PNG = "image/png"
#: Rendered media types produced (PS3.18 8.7.4), the first being the default.
MEDIA_TYPES: tuple[str, ...] = (JPEG, PNG)
DEFAULT_QUALITY = 90
#: JPEG cannot be larger than 65,535 pixels a side; PNG is held to the same bound.
MAX_SIDE = 65_000

_PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "gdcm", "pillow")


class VoiFunction(enum.StrEnum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True, slots=True)
class Window:
    """A window (PS3.3 C.11.2.1.2): ``width >= 1`` for LINEAR, ``> 0`` otherwise."""

    center: float
    width: float
    function: VoiFunction = VoiFunction.LINEAR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise BadRequest("window center and width must be finite numbers")
        minimum_ok = self.width >= 1 if self.function is VoiFunction.LINEAR else self.width > 0
        if not minimum_ok:
            raise BadRequest(
                "window width must be at least 1 for LINEAR and positive otherwise"
            )


@dataclass(frozen=True, slots=True)
class Lut:
    """A lookup table (PS3.3 C.11.1.1.1): ``data[x - first_mapped]``, clamped."""

    first_mapped: int
    data: np.ndarray
    bits: int

    def apply(self, values: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(values).astype(np.int64) - self.first_mapped, 0, len(self.data) - 1)
        result: np.ndarray = self.data[index]
        return result


@dataclass(frozen=True, slots=True)
class Region:
    """A source region in pixels (PS3.18 8.3.5.1.3 ``sx,sy,sw,sh``): top-left corner
    ``(x, y)``, ``|width| x |height|`` pixels; ``None`` extends to the image edge; a
    negative width (height) mirrors the region horizontally (vertically)."""

    x: int = 0
    y: int = 0
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class RelativeRegion:
    """WADO-URI ``region=xmin,ymin,xmax,ymax`` (PS3.18 9.5.2.5): fractions of the
    image's width and height, ``0.0 <= min < max <= 1.0``."""

    left: float
    top: float
    right: float
    bottom: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.left < self.right <= 1.0 and 0.0 <= self.top < self.bottom <= 1.0):
            raise BadRequest("region must be xmin,ymin,xmax,ymax with 0.0 <= min < max <= 1.0")

    def to_pixels(self, columns: int, rows: int) -> Region:
        x0, y0 = math.floor(self.left * columns), math.floor(self.top * rows)
        x1 = min(columns, max(x0 + 1, math.ceil(self.right * columns)))
        y1 = min(rows, max(y0 + 1, math.ceil(self.bottom * rows)))
        return Region(min(x0, columns - 1), min(y0, rows - 1), x1 - min(x0, columns - 1), y1 - min(y0, rows - 1))


@dataclass(frozen=True, slots=True)
class Viewport:
    """``vw,vh`` of the viewport parameter; ``None`` leaves that side unconstrained."""

    width: int | None
    height: int | None
    region: Region | RelativeRegion | None = None

    def __post_init__(self) -> None:
        for side in (self.width, self.height):
            if side is not None and not 1 <= side <= MAX_SIDE:
                raise BadRequest(f"viewport sides must be between 1 and {MAX_SIDE}")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What the client asked for (PS3.18 8.3.5.1)."""

    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if self.media_type not in MEDIA_TYPES:
            raise NotAcceptable("rendered images are produced as image/jpeg or image/png")
        if not 1 <= self.quality <= 100:
            raise BadRequest("quality must be an integer from 1 to 100")


@dataclass(frozen=True, slots=True)
class Presentation:
    """The attributes of one frame that say how its stored values become display values."""

    rows: int
    columns: int
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    bits_stored: int = 8
    number_of_frames: int = 1
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: Lut | None = None
    windows: tuple[Window, ...] = ()
    voi_lut: Lut | None = None
    palette: tuple[Lut, Lut, Lut] | None = None

    @property
    def monochrome(self) -> bool:
        return self.photometric in ("MONOCHROME1", "MONOCHROME2")


# --- the pure pipeline ------------------------------------------------------------------


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 with ``ymin = 0``, ``ymax = 255`` (float result)."""
    c, w = window.center, window.width
    x = values.astype(np.float64, copy=False)
    if window.function is VoiFunction.SIGMOID:
        sigmoid: np.ndarray = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700, 700)))
        return sigmoid
    if window.function is VoiFunction.LINEAR_EXACT:
        low, high = c - w / 2, c + w / 2
        y = ((x - c) / w + 0.5) * 255.0
    else:
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.zeros_like(x)
    result: np.ndarray = np.where(x <= low, 0.0, np.where(x > high, 255.0, y))
    return result


def _modality(pixels: np.ndarray, p: Presentation) -> np.ndarray:
    """PS3.3 C.11.1: stored values to modality values."""
    if p.modality_lut is not None:
        mapped: np.ndarray = p.modality_lut.apply(pixels).astype(np.float64)
        return mapped
    values: np.ndarray = pixels.astype(np.float64)
    if p.rescale_slope != 1.0:
        values *= p.rescale_slope
    if p.rescale_intercept != 0.0:
        values += p.rescale_intercept
    return values


def _voi(values: np.ndarray, p: Presentation, window: Window | None) -> np.ndarray:
    """PS3.3 C.11.2: modality values to 0..255 (float)."""
    chosen = window or (p.windows[0] if p.windows else None)
    if chosen is not None:
        return apply_window(values, chosen)
    if p.voi_lut is not None:
        top = float((1 << p.voi_lut.bits) - 1) if p.voi_lut.bits > 0 else 255.0
        scaled: np.ndarray = p.voi_lut.apply(values).astype(np.float64) * (255.0 / top)
        return scaled
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    stretched: np.ndarray = (values - low) * 255.0 / (high - low)
    return stretched


def _ybr_to_rgb(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2: YCbCr (full or partial range, 8 bits) to RGB."""
    ybr = pixels.astype(np.float64)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128.0, ybr[..., 2] - 128.0
    if photometric.startswith("YBR_PARTIAL"):
        y = (y - 16.0) * (255.0 / 219.0)
        cb = cb * (255.0 / 224.0)
        cr = cr * (255.0 / 224.0)
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Display values rounded to the nearest integer and clamped to 0..255."""
    out: np.ndarray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


def to_display(pixels: np.ndarray, p: Presentation, window: Window | None = None) -> np.ndarray:
    """One decoded frame (rows x columns [x samples]) as 8-bit display values:
    ``uint8`` (rows, columns) for grayscale, (rows, columns, 3) RGB for colour."""
    if p.monochrome:
        if pixels.ndim != 2:
            raise TranscodeError("grayscale frame does not have one sample per pixel")
        shown = _voi(_modality(pixels, p), p, window)
        if p.photometric == "MONOCHROME1":
            shown = 255.0 - shown
        return _to_uint8(shown)
    if p.photometric == "PALETTE COLOR":
        if p.palette is None or pixels.ndim != 2:
            raise NotAcceptable("this palette colour image cannot be rendered")
        channels = []
        for lut in p.palette:
            values = lut.apply(pixels).astype(np.float64)
            top = float((1 << lut.bits) - 1) if lut.bits > 0 else 255.0
            channels.append(values * (255.0 / top))
        return _to_uint8(np.stack(channels, axis=-1))
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise NotAcceptable(f"photometric interpretation {p.photometric} cannot be rendered")
    if p.photometric.startswith("YBR"):
        if p.photometric not in ("YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"):
            raise NotAcceptable(f"photometric interpretation {p.photometric} cannot be rendered")
        if p.bits_stored > 8:
            pixels = pixels.astype(np.float64) * (255.0 / ((1 << p.bits_stored) - 1))
        return _to_uint8(_ybr_to_rgb(pixels, p.photometric))
    if p.photometric != "RGB":
        raise NotAcceptable(f"photometric interpretation {p.photometric} cannot be rendered")
    if p.bits_stored > 8 or pixels.dtype != np.uint8:
        top = float((1 << max(p.bits_stored, 1)) - 1)
        scaled = pixels.astype(np.float64) * (255.0 / top)
        return _to_uint8(scaled)
    return pixels


def _crop(pixels: np.ndarray, region: Region | RelativeRegion | None) -> np.ndarray:
    """PS3.18 8.3.5.1.3: the source region; outside the image is a bad request."""
    if region is None:
        return pixels
    rows, columns = pixels.shape[0], pixels.shape[1]
    if isinstance(region, RelativeRegion):
        region = region.to_pixels(columns, rows)
    if not (0 <= region.x < columns and 0 <= region.y < rows):
        raise BadRequest("viewport region origin is outside the image")
    width = columns - region.x if region.width is None else region.width
    height = rows - region.y if region.height is None else region.height
    if width == 0 or height == 0:
        raise BadRequest("viewport region is empty")
    x0, x1 = region.x, region.x + abs(width)
    y0, y1 = region.y, region.y + abs(height)
    if x0 < 0 or y0 < 0 or x1 > columns or y1 > rows:
        raise BadRequest("viewport region extends outside the image")
    out = pixels[y0:y1, x0:x1]
    if width < 0:
        out = out[:, ::-1]
    if height < 0:
        out = out[::-1, :]
    return out


def output_size(width: int, height: int, viewport: Viewport | None) -> tuple[int, int]:
    """The largest ``(width, height)`` fitting the viewport with the aspect ratio kept."""
    if viewport is None or (viewport.width is None and viewport.height is None):
        return width, height
    scales = []
    if viewport.width is not None:
        scales.append(viewport.width / width)
    if viewport.height is not None:
        scales.append(viewport.height / height)
    scale = min(scales)
    out_w = max(1, min(round(width * scale), viewport.width or MAX_SIDE))
    out_h = max(1, min(round(height * scale), viewport.height or MAX_SIDE))
    if max(out_w, out_h) > MAX_SIDE:
        raise BadRequest(f"rendered images are at most {MAX_SIDE} pixels a side")
    return out_w, out_h


def encode(image: np.ndarray, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """An 8-bit grayscale or RGB array as JPEG (baseline, 4:2:0 for colour) or PNG."""
    picture = Image.fromarray(np.ascontiguousarray(image), mode="L" if image.ndim == 2 else "RGB")
    out = BytesIO()
    if media_type == JPEG:
        picture.save(out, format="JPEG", quality=quality)
    elif media_type == PNG:
        picture.save(out, format="PNG")
    else:
        raise NotAcceptable("rendered images are produced as image/jpeg or image/png")
    return out.getvalue()


def render(
    pixels: np.ndarray,
    presentation: Presentation,
    options: RenderOptions,
    *,
    max_bytes: int,
) -> bytes:
    """One decoded frame rendered and encoded as ``options`` say (module docstring)."""
    region = options.viewport.region if options.viewport else None
    cropped = _crop(pixels, region)
    height, width = cropped.shape[0], cropped.shape[1]
    out_w, out_h = output_size(width, height, options.viewport)
    channels = 1 if presentation.monochrome else 3
    if out_w * out_h * channels > max_bytes:
        raise TooLarge("rendered image would be larger than max_decoded_bytes")
    display = to_display(cropped, presentation, options.window)
    if (out_w, out_h) != (width, height):
        picture = Image.fromarray(np.ascontiguousarray(display), mode="L" if display.ndim == 2 else "RGB")
        display = np.asarray(picture.resize((out_w, out_h), Image.Resampling.LANCZOS))
    return encode(display, options.media_type, options.quality)


# --- from a data set ----------------------------------------------------------------------


def _first(value: Any) -> Any:
    """The first value of a possibly multi-valued element value."""
    if isinstance(value, str | bytes | bytearray):
        return value
    if isinstance(value, list | tuple | MultiValue):
        return value[0] if len(value) else None
    return value


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple | MultiValue):
        return list(value)
    return [value]


def _number(ds: Dataset, keyword: str) -> float | None:
    """The first value of a numeric (DS/IS/US) attribute; None if absent or malformed."""
    try:
        value = _first(ds.get(keyword))
        if value is None or value == "":
            return None
        number = float(value)
    except Exception:
        return None
    return number if math.isfinite(number) else None


def _integer(ds: Dataset, keyword: str, default: int, *, minimum: int = 1) -> int:
    number = _number(ds, keyword)
    if number is None:
        return default
    if number != int(number) or number < minimum:
        raise InvalidInstance(f"{keyword} is out of range")
    return int(number)


def _lut(item: Dataset, descriptor: str, data: str, *, little_endian: bool, signed: bool) -> Lut | None:
    """A LUT from its descriptor ``[entries, first mapped, bits]`` and data, or None
    when it is absent or inconsistent (PS3.3 C.11.1.1.1: 0 entries means 65536; the
    first mapped value of signed pixel data may be encoded as US)."""
    order = "<" if little_endian else ">"
    try:
        desc_value = item[descriptor].value if descriptor in item else None
        raw = item[data].value if data in item else None
        if desc_value is None or raw is None:
            return None
        if isinstance(desc_value, bytes | bytearray):
            if len(desc_value) != 6:
                return None
            desc = [int(v) for v in np.frombuffer(desc_value, dtype=f"{order}u2")]
        else:
            desc = [int(v) for v in _values(desc_value)]
        if len(desc) != 3:
            return None
        entries, first, bits = desc
        entries = entries or 65536
        if isinstance(raw, bytes | bytearray):
            if len(raw) == 2 * entries:
                table = np.frombuffer(raw, dtype=f"{order}u2")
            elif len(raw) in (entries, entries + 1) and bits <= 8:
                table = np.frombuffer(raw[:entries], dtype=np.uint8)
            else:
                return None
        else:
            table = np.asarray([int(v) for v in _values(raw)], dtype=np.int64)
        if len(table) != entries or not 1 <= bits <= 16:
            return None
        if signed and first >= 1 << 15:
            first -= 1 << 16
        return Lut(first_mapped=first, data=table.astype(np.int64), bits=bits)
    except Exception:
        return None


def _item(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of sequence ``keyword``, None when absent, empty or malformed."""
    try:
        seq = ds.get(keyword)
        item = seq[0] if seq else None
    except Exception:
        return None
    return item if isinstance(item, Dataset) else None


def _frame_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """PS3.3 C.7.6.16: a functional group macro for frame ``index`` (per-frame first)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    try:
        frame_item = per_frame[index] if per_frame else None
    except Exception:
        frame_item = None
    found = _item(frame_item, keyword) if frame_item is not None else None
    if found is not None:
        return found
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    return _item(shared, keyword) if shared is not None else None


def _windows(source: Dataset) -> tuple[Window, ...]:
    """Window Center/Width pairs (PS3.3 C.11.2.1.2) with their VOI LUT Function;
    pairs that break the width rule are ignored."""
    try:
        centers = _values(source.get("WindowCenter"))
        widths = _values(source.get("WindowWidth"))
        name = str(source.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    except Exception:
        return ()
    function = VoiFunction(name) if name in VoiFunction.__members__ else VoiFunction.LINEAR
    out: list[Window] = []
    for c, w in zip(centers, widths, strict=False):
        try:
            out.append(Window(float(c), float(w), function))
        except (BadRequest, TypeError, ValueError):
            continue
    return tuple(out)


def presentation_from_dataset(ds: Dataset, frame_index: int = 0, *, little_endian: bool = True) -> Presentation:
    """The :class:`Presentation` of frame ``frame_index`` (0-based) of ``ds``.

    Modality: Rescale Slope/Intercept (the frame's Pixel Value Transformation for
    enhanced objects) when present, else the Modality LUT Sequence. VOI: the Window
    Center/Width pairs (the frame's Frame VOI LUT for enhanced objects) and the first
    VOI LUT Sequence item. Malformed display attributes are ignored, not fatal.
    """
    rows = _integer(ds, "Rows", 0)
    columns = _integer(ds, "Columns", 0)
    if rows <= 0 or columns <= 0:
        raise InvalidInstance("pixel data present but Rows or Columns is missing")
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    bits_allocated = _integer(ds, "BitsAllocated", 8)
    signed = _number(ds, "PixelRepresentation") == 1
    p = Presentation(
        rows=rows,
        columns=columns,
        samples_per_pixel=_integer(ds, "SamplesPerPixel", 1),
        photometric=photometric,
        bits_stored=_integer(ds, "BitsStored", bits_allocated),
        number_of_frames=_integer(ds, "NumberOfFrames", 1),
    )
    if p.monochrome:
        transform = _frame_group(ds, frame_index, "PixelValueTransformationSequence") or ds
        slope = _number(transform, "RescaleSlope")
        intercept = _number(transform, "RescaleIntercept")
        modality_lut = None
        modality_item = _item(ds, "ModalityLUTSequence")
        if slope is None and intercept is None and modality_item is not None:
            modality_lut = _lut(modality_item, "LUTDescriptor", "LUTData",
                                little_endian=little_endian, signed=signed)
        frame_voi = _frame_group(ds, frame_index, "FrameVOILUTSequence")
        voi_item = _item(ds, "VOILUTSequence")
        voi_lut = None
        if voi_item is not None:
            # the VOI LUT input is the modality output: signed unless rescaled to >= 0
            voi_lut = _lut(voi_item, "LUTDescriptor", "LUTData", little_endian=little_endian,
                           signed=signed or (intercept or 0.0) < 0)
        return dataclasses.replace(
            p,
            rescale_slope=1.0 if slope is None or slope == 0 else slope,
            rescale_intercept=intercept or 0.0,
            modality_lut=modality_lut,
            windows=(_windows(frame_voi) if frame_voi is not None else ()) or _windows(ds),
            voi_lut=voi_lut,
        )
    if photometric == "PALETTE COLOR":
        luts = [
            _lut(ds, f"{colour}PaletteColorLookupTableDescriptor",
                 f"{colour}PaletteColorLookupTableData", little_endian=little_endian, signed=False)
            for colour in ("Red", "Green", "Blue")
        ]
        red, green, blue = luts
        if red is not None and green is not None and blue is not None:
            return dataclasses.replace(p, palette=(red, green, blue))
    return p


# --- decoding one frame -------------------------------------------------------------------


def _read_dataset(scan: part10.ScanResult, syntax: transfer_syntaxes.TransferSyntax) -> Dataset:
    with pydicom_guard():
        try:
            return read_dataset(
                BytesIO(scan.dataset_without_pixels()),
                is_implicit_VR=syntax.implicit_vr,
                is_little_endian=syntax.little_endian,
            )
        except Exception:
            raise InvalidInstance("data set cannot be parsed") from None


def _preferred_plugin(available: tuple[str, ...]) -> str:
    for name in _PLUGIN_PREFERENCE:
        if name in available:
            return name
    return ""


def _decode_with(
    decoder: Any, work: Dataset, index: int, plugin: str
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """One frame decoded with ``plugin`` (any available one if empty); None if it fails.
    YBR_FULL/YBR_FULL_422 come back as RGB (``as_rgb``)."""
    with pydicom_guard():
        try:
            array, info = next(
                decoder.iter_array(work, indices=[index], decoding_plugin=plugin, as_rgb=True)
            )
        except (CoffreError, MemoryError):
            raise
        except Exception:
            return None
    return array, dict(info)


def decode_frame(
    data: bytes, frame_index: int, *, limits: LimitsSettings
) -> tuple[np.ndarray, Presentation]:
    """Frame ``frame_index`` (0-based) of a PS3.10 object, decoded, with its
    :class:`Presentation`. YBR is returned as RGB when the decoder converts it (the
    presentation then says ``RGB``). Only that frame is decoded.

    Raises :class:`NotAcceptable` when there is nothing to render (no Pixel Data,
    video), :class:`BadRequest` for a frame that does not exist (PS3.18 9.5.2.1),
    :class:`TooLarge` past ``limits.max_decoded_bytes`` and :class:`TranscodeError`
    when the codec fails.
    """
    scan = part10.scan(data, limits)
    syntax = transfer_syntaxes.get(scan.transfer_syntax_uid)
    if syntax.video:
        raise NotAcceptable("encapsulated video is not rendered as an image")
    pixel = scan.pixel_data
    if pixel is None or pixel.tag != part10.PIXEL_DATA:
        raise NotAcceptable("the instance has no Pixel Data to render")
    ds = _read_dataset(scan, syntax)
    frames = _integer(ds, "NumberOfFrames", 1)
    if not 0 <= frame_index < frames:
        raise BadRequest(f"frame {frame_index + 1} does not exist (the instance has {frames})")
    with pydicom_guard():  # values are converted lazily; pydicom warns about bad ones
        presentation = presentation_from_dataset(ds, frame_index, little_endian=syntax.little_endian)
    bits = _integer(ds, "BitsAllocated", 8)
    if bits not in (1, 8, 16, 32):
        raise NotAcceptable("BitsAllocated must be 1, 8, 16 or 32 to be rendered")
    size = presentation.rows * presentation.columns * presentation.samples_per_pixel
    if size * max(-(-bits // 8), 4) > limits.max_decoded_bytes:
        raise TooLarge("the frame would be larger than max_decoded_bytes once decoded")

    if pixel.encapsulated:
        value = scan.buffer[pixel.value_offset : pixel.element_end - 8]
    else:
        value = scan.buffer[pixel.value_offset : pixel.value_offset + pixel.value_length]
    work = Dataset()
    for tag in ds.keys():
        if 0x00280000 <= tag < 0x00290000:
            work[tag] = ds.get_item(tag)
    work.set_original_encoding(syntax.implicit_vr, syntax.little_endian)
    work.file_meta = FileMetaDataset()
    work.file_meta.TransferSyntaxUID = UID(syntax.uid)
    with pydicom_guard():
        try:
            work.PixelData = value
            work["PixelData"].VR = "OB" if pixel.encapsulated or bits <= 8 else "OW"
            work["PixelData"].is_undefined_length = pixel.encapsulated
        except Exception:
            raise InvalidInstance("pixel description cannot be decoded") from None
    try:
        decoder = get_decoder(UID(syntax.uid))
    except NotImplementedError:
        raise TranscodeError("no decoder for this transfer syntax") from None
    preferred = _preferred_plugin(tuple(decoder.available_plugins))
    decoded: tuple[np.ndarray, dict[str, Any]] | None = None
    for plugin in dict.fromkeys([preferred, ""]):
        decoded = _decode_with(decoder, work, frame_index, plugin)
        if decoded is not None:
            break
    if decoded is None:
        raise TranscodeError("pixel data cannot be decoded")
    array, info = decoded
    decoded_photometric = str(info.get("photometric_interpretation", "") or "").strip().upper()
    if presentation.photometric.startswith("YBR") and decoded_photometric == "RGB":
        presentation = dataclasses.replace(presentation, photometric="RGB")
    expected = (presentation.rows, presentation.columns)
    if array.shape[:2] != expected:
        raise TranscodeError("decoded frame does not match Rows and Columns")
    return array, presentation


def frame_count(data: bytes, *, limits: LimitsSettings) -> int:
    """How many frames of a PS3.10 object can be rendered: its Number of Frames, 0
    without Pixel Data or for encapsulated video."""
    scan = part10.scan(data, limits)
    syntax = transfer_syntaxes.get(scan.transfer_syntax_uid)
    pixel = scan.pixel_data
    if syntax.video or pixel is None or pixel.tag != part10.PIXEL_DATA:
        return 0
    return _integer(_read_dataset(scan, syntax), "NumberOfFrames", 1)


def render_instance(
    data: bytes, frame_index: int, options: RenderOptions, *, limits: LimitsSettings
) -> bytes:
    """Frame ``frame_index`` (0-based) of a PS3.10 object rendered as ``options`` say."""
    pixels, presentation = decode_frame(data, frame_index, limits=limits)
    return render(pixels, presentation, options, max_bytes=limits.max_decoded_bytes)
