"""The projected state in Redis: the one package that knows how it is laid out.

Key names come from common/keys.py; the fields and encodings are this package's alone:

  stream:<id>          hash    every StreamState field but `parts`, plus `uploaded_bytes`
                               and `part_count`; numbers as decimal strings
  stream:<id>:parts    hash    part number -> msgpack [offset, length, crc32, etag, ctime_ns]
                               (an MD5 ETag as its 16 bytes)
  streams              zset    every kept stream id, scored by its creation time (ms)
  status:<status>      zset    the ids of the streams in that status: active and finalizing
                               scored by creation, completed, failed, aborted by when they
                               ended (so their sizes are the counts, and pruning takes the
                               oldest finished first)
  retries              zset    failed streams to try again, scored by when
  paths                hash    relative path -> id of its latest kept stream
  pruned               string  how many finished streams were pruned so far
  projector:position   string  id of the last log entry folded into all of the above
  snapshot             hash    format 2, generation, position, created_at_ms, streams,
                               stream_chunks, path_chunks
  snapshot:<gen>:s<n>  string  zlib-compressed msgpack list of up to 500 stream states
  snapshot:<gen>:p<n>  string  zlib-compressed msgpack map of up to 5,000 paths

Everyone reads through `StateReader`, which holds a slice at a time. Only the projector,
replay and retention write, through `StateWriter`, and every write of theirs is one
MULTI/EXEC fenced by the projector lease: a writer that lost the lease writes nothing.
"""

from cefmp4.common.statestore._layout import (
    BATCH,
    FINISHED_STATUSES,
    OPEN_STATUSES,
    STATUSES,
    Snapshot,
    SnapshotInfo,
    StreamSummary,
    decode_summary,
    summary_of,
)
from cefmp4.common.statestore._reader import StateReader
from cefmp4.common.statestore._writer import StateChanges, StateWriter

__all__ = [
    "BATCH",
    "FINISHED_STATUSES",
    "OPEN_STATUSES",
    "STATUSES",
    "Snapshot",
    "SnapshotInfo",
    "StateChanges",
    "StateReader",
    "StateWriter",
    "StreamSummary",
    "decode_summary",
    "summary_of",
]
