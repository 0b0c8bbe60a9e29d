"""The Content-Type an object is stored with, from its name's extension.

S3 stores an object sent without one as binary/octet-stream, which browsers download
instead of playing.
"""

from __future__ import annotations

from pathlib import PurePosixPath

DEFAULT_CONTENT_TYPE = "application/octet-stream"

_BY_SUFFIX = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".qt": "video/quicktime",
    ".ts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".mts": "video/mp2t",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mpd": "application/dash+xml",
    ".mkv": "video/x-matroska",
    ".mka": "audio/x-matroska",
    ".webm": "video/webm",
    ".flv": "video/x-flv",
    ".avi": "video/x-msvideo",
    ".3gp": "video/3gpp",
    ".ogv": "video/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".json": "application/json",
}


def content_type_for(key: str) -> str:
    """The media type of an object key by its extension, case-insensitive."""
    return _BY_SUFFIX.get(PurePosixPath(key).suffix.lower(), DEFAULT_CONTENT_TYPE)
