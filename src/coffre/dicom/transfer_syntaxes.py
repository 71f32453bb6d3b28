"""Transfer syntaxes the archive accepts and archives as received (PS3.5 10, Annex A).

The archive stores what it receives (DESIGN 4.7) and transcodes on retrieve, so this
table lists the syntaxes it can *store*: the native ones (A.1, A.2, A.3 retired
big endian), the deflated one (A.5), and the encapsulated image and video syntaxes
(A.4) whose frames it can locate. Anything else is refused with
:class:`~coffre.errors.UnsupportedTransferSyntax`.
"""

from __future__ import annotations

from dataclasses import dataclass

from coffre.errors import UnsupportedTransferSyntax

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_BD = "1.2.840.10008.1.2.4.103"
MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"
MPEG4_HP42_3D = "1.2.840.10008.1.2.4.105"
MPEG4_HP42_STEREO = "1.2.840.10008.1.2.4.106"
HEVC_MP51 = "1.2.840.10008.1.2.4.107"
HEVC_M10P51 = "1.2.840.10008.1.2.4.108"


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    uid: str
    name: str
    little_endian: bool = True
    implicit_vr: bool = False
    encapsulated: bool = False
    deflated: bool = False
    #: encapsulated video (PS3.5 8.2.5): the fragments form one stream, not frames
    video: bool = False
    retired: bool = False
    #: the compression may lose information (PS3.5 8.2); the lossless syntaxes are preferred
    lossy: bool = False


def _enc(uid: str, name: str, *, video: bool = False, lossy: bool = False) -> TransferSyntax:
    return TransferSyntax(uid, name, encapsulated=True, video=video, lossy=lossy or video)


ACCEPTED_TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", implicit_vr=True),
    TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
    TransferSyntax(
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", deflated=True
    ),
    TransferSyntax(
        EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian", little_endian=False, retired=True
    ),
    _enc(JPEG_BASELINE_8BIT, "JPEG Baseline (Process 1)", lossy=True),
    _enc(JPEG_EXTENDED_12BIT, "JPEG Extended (Process 2 & 4)", lossy=True),
    _enc(JPEG_LOSSLESS, "JPEG Lossless, Non-Hierarchical (Process 14)"),
    _enc(JPEG_LOSSLESS_SV1, "JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1)"),
    _enc(JPEG_LS_LOSSLESS, "JPEG-LS Lossless Image Compression"),
    _enc(JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Lossy (Near-Lossless) Image Compression", lossy=True),
    _enc(JPEG_2000_LOSSLESS, "JPEG 2000 Image Compression (Lossless Only)"),
    _enc(JPEG_2000, "JPEG 2000 Image Compression", lossy=True),
    _enc(HTJ2K_LOSSLESS, "High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
    _enc(HTJ2K_LOSSLESS_RPCL, "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)"),
    _enc(HTJ2K, "High-Throughput JPEG 2000 Image Compression", lossy=True),
    _enc(RLE_LOSSLESS, "RLE Lossless"),
    _enc(MPEG2_MPML, "MPEG2 Main Profile / Main Level", video=True),
    _enc(MPEG2_MPHL, "MPEG2 Main Profile / High Level", video=True),
    _enc(MPEG4_HP41, "MPEG-4 AVC/H.264 High Profile / Level 4.1", video=True),
    _enc(MPEG4_HP41_BD, "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", video=True),
    _enc(MPEG4_HP42_2D, "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", video=True),
    _enc(MPEG4_HP42_3D, "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", video=True),
    _enc(MPEG4_HP42_STEREO, "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", video=True),
    _enc(HEVC_MP51, "HEVC/H.265 Main Profile / Level 5.1", video=True),
    _enc(HEVC_M10P51, "HEVC/H.265 Main 10 Profile / Level 5.1", video=True),
)

BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in ACCEPTED_TRANSFER_SYNTAXES}


def is_accepted(uid: str) -> bool:
    return uid in BY_UID


def get(uid: str) -> TransferSyntax:
    """The accepted transfer syntax ``uid``, else :class:`UnsupportedTransferSyntax`."""
    try:
        return BY_UID[uid]
    except KeyError:
        raise UnsupportedTransferSyntax("transfer syntax is not accepted by the archive") from None


def is_encapsulated(uid: str) -> bool:
    """Pixel data in fragments (PS3.5 A.4). Raises for a syntax the archive does not accept."""
    return get(uid).encapsulated


def is_lossy(uid: str) -> bool:
    """True for lossy image compression and for video (PS3.5 8.2)."""
    return get(uid).lossy


def is_video(uid: str) -> bool:
    return get(uid).video


def is_deflated(uid: str) -> bool:
    """The data set after the File Meta is a raw deflate stream (PS3.5 A.5)."""
    return get(uid).deflated


def is_little_endian(uid: str) -> bool:
    return get(uid).little_endian


def is_implicit(uid: str) -> bool:
    return get(uid).implicit_vr
