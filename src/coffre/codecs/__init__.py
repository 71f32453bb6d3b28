"""The codecs port: pixel data decoding, encoding and transcoding (PS3.5 8, Annex A).

The archive stores objects as received (DESIGN 4.7); on retrieve (C-MOVE, C-GET,
WADO-RS) a peer may not accept the stored transfer syntax, so the object is transcoded
on the way out. Everything here takes and returns complete PS3.10 bytes or numpy
arrays, is bounded (the object is scanned by :mod:`coffre.dicom.part10` first, decoded
sizes are checked before any allocation) and safe to call from several threads.
Library failures are translated to :mod:`coffre.errors` classes and
:class:`TranscodeError` at this boundary; nothing here imports the network, web or
index layers.

- :func:`can_transcode`, :func:`targets_for`: which ``(source, target)`` pairs exist;
- :func:`transcode`: PS3.10 bytes in one syntax to PS3.10 bytes in another;
- :func:`decode_frames`: the decoded pixels of an object, one array for all frames.
"""

from coffre.codecs.transcode import (
    DEFAULT_MAX_DECODED_BYTES,
    ENCODABLE,
    LOSSY,
    NATIVE,
    TranscodeError,
    can_transcode,
    decode_frames,
    decoded_size,
    targets_for,
    transcode,
)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "ENCODABLE",
    "LOSSY",
    "NATIVE",
    "TranscodeError",
    "can_transcode",
    "decode_frames",
    "decoded_size",
    "targets_for",
    "transcode",
]
