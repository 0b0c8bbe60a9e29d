"""The bucket is shared: the orphan sweep aborts only uploads this deployment started."""

from __future__ import annotations

from pathlib import Path

from cefmp4.common.config import Settings
from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import Storage
from cefmp4.consumer.intents import UploadIntents
from tests.conftest import Processes, Services, eventually
from tests.s3edge import s3_edge
from tests.test_pipeline import assert_nothing_open, wait_completed


async def test_other_tools_uploads_survive_the_sweep_with_no_prefix(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    await storage.ensure_bucket()
    foreign = [
        await storage.create_upload(key, "not-ours")
        for key in ("backup/db.tar", "cam.mp4", "site-b/cam.mp4")
    ]
    # Ours: an uploader died right after CreateMultipartUpload, before UploadStarted.
    await UploadIntents(log.redis, log.keys).intend("s-lost", "lost.mp4")
    ours = await storage.create_upload("lost.mp4", "s-lost")
    processes.start(
        "consumer", ORPHAN_UPLOAD_GRACE_SECONDS="1", ORPHAN_CHECK_INTERVAL_SECONDS="0.5"
    )

    async def ours_gone() -> bool:
        return ours not in {u.upload_id for u in await storage.open_uploads()}

    await eventually(ours_gone, 30, "our orphan aborted")
    # That sweep found the foreign uploads older than the grace period too.
    assert {u.upload_id for u in await storage.open_uploads()} == set(foreign)
    assert await UploadIntents(log.redis, log.keys).all() == []
    for key, upload_id in zip(("backup/db.tar", "cam.mp4", "site-b/cam.mp4"), foreign, strict=True):
        await storage.abort(key, upload_id)


async def test_a_key_that_may_not_list_uploads_switches_the_sweep_off_and_uploads_on(
    processes: Processes,
    log: EventLog,
    storage: Storage,
    watch_dir: Path,
    services: Services,
    settings: Settings,
) -> None:
    async with s3_edge(services.s3_endpoint_url) as edge:
        for operation in ("HeadBucket", "CreateBucket", "ListMultipartUploads"):
            edge.refuse(operation)
        await storage.ensure_bucket()  # made by someone allowed to
        processes.start("producer")
        consumer = processes.start(
            "consumer",
            S3_ENDPOINT_URL=edge.url,
            ORPHAN_UPLOAD_GRACE_SECONDS="1",
            ORPHAN_CHECK_INTERVAL_SECONDS="0.5",
        )
        (watch_dir / "cam.mp4").write_bytes(b"x" * 1_000_000)

        await wait_completed(log, storage, watch_dir, "cam.mp4")

        async def switched_off() -> bool:
            return "orphan sweep switched off" in processes.output()

        await eventually(switched_off, 30, "the sweep switched off with a warning")
        (watch_dir / "two.mp4").write_bytes(b"y" * 2_000_000)
        await wait_completed(log, storage, watch_dir, "two.mp4")
        assert processes.output().count("orphan sweep switched off") == 1
        assert edge.count("ListMultipartUploads") == 1
        assert consumer.poll() is None
    await assert_nothing_open(storage)
