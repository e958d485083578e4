"""Why a video file cannot be read: the container's own bytes say whether it is empty, truncated (an MP4 whose
index, the `moov` box, never got written: a recording cut off before it was finalised) or in a codec OpenCV's
wheels do not decode, so the error names the real cause instead of a list of formats. Python 3.8-compatible."""

import struct
from typing import Optional

# MP4 sample-entry codes -> what a user calls them (the ones OpenCV's pip wheels decode: mp4v, avc1, MJPG)
_MP4_CODECS = {
    b"mp4v": "MPEG-4 Part 2 (mp4v)",
    b"avc1": "H.264 (avc1)",
    b"avc3": "H.264 (avc3)",
    b"hvc1": "H.265/HEVC (hvc1)",
    b"hev1": "H.265/HEVC (hev1)",
    b"av01": "AV1 (av01)",
    b"vp09": "VP9 (vp09)",
    b"jpeg": "Motion JPEG (jpeg)",
}
_DECODED = (b"mp4v", b"avc1", b"avc3", b"jpeg")
_SCAN_BYTES = 4 << 20  # the boxes that matter sit near the start or the end of the file


def _top_level_boxes(data: bytes, size: int):
    """(type, offset, declared size) of the MP4 top-level boxes found in the file's first bytes."""
    offset = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if length == 1 and offset + 16 <= len(data):
            length = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif length == 0:
            length = size - offset
        if length < 8:
            return
        yield kind, offset, length
        offset += length


def diagnose_video(path: str) -> Optional[str]:
    """What is wrong with the video file at `path` as far as its bytes tell, or None when they look readable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(0)
            head = handle.read(_SCAN_BYTES)
            handle.seek(max(0, size - _SCAN_BYTES))
            tail = handle.read()
    except OSError as exc:
        return "cannot read it (%s)" % exc
    if size == 0:
        return "the file is empty (0 bytes): the recording or the copy failed; record or push it again"
    if head[4:8] == b"ftyp":
        return _diagnose_mp4(head, tail, size)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI " and size < 12 + struct.unpack("<I", head[4:8])[0]:
        return "the AVI file is truncated (%d of %d bytes): the copy or recording was cut off" % (
            size,
            8 + struct.unpack("<I", head[4:8])[0],
        )
    return None


def _diagnose_mp4(head: bytes, tail: bytes, size: int) -> Optional[str]:
    boxes = list(_top_level_boxes(head, size))
    kinds = [kind for kind, _, _ in boxes]
    if boxes and boxes[-1][1] + boxes[-1][2] > size:
        return (
            "the MP4 file is truncated: its %r box needs %d bytes past the end of the file (%d bytes)%s; the "
            "recording or copy was cut off: copy it again, or re-record"
            % (
                boxes[-1][0].decode("latin-1"),
                boxes[-1][1] + boxes[-1][2] - size,
                size,
                "" if b"moov" in kinds else ", and it has no index ('moov' box)",
            )
        )
    if b"moov" not in head and b"moov" not in tail:
        return (
            "the MP4 file has no index ('moov' box): the recording was stopped before it was finalised; "
            "re-record it, or rebuild the index with a repair tool (e.g. untrunc) if the data matters"
        )
    found = [code for code in _MP4_CODECS if code in head or code in tail]
    unsupported = [code for code in found if code not in _DECODED]
    if unsupported and not any(code in _DECODED for code in found):
        return (
            "its codec is %s, which OpenCV's pip wheels do not decode; re-encode with e.g. `ffmpeg -i in -c:v "
            "mjpeg out.avi` or `-c:v mpeg4`" % _MP4_CODECS[unsupported[0]]
        )
    return None
