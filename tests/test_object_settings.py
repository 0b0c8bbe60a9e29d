"""Objects the way the bucket expects: type, tags, storage class, encryption, addressing, TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cefmp4.common.config import Settings, load_settings
from cefmp4.common.content_types import content_type_for
from cefmp4.common.errors import StorageError
from cefmp4.common.eventlog import EventLog
from cefmp4.common.s3 import SentPart, Storage
from cefmp4.consumer.sidecar import SUFFIX
from tests.conftest import Processes, Services, config_error, eventually
from tests.s3edge import s3_edge
from tests.test_pipeline import PART, wait_completed


@pytest.mark.parametrize(
    ("key", "content_type"),
    [
        ("cam/a.mp4", "video/mp4"),
        ("A.MOV", "video/quicktime"),
        ("live/seg7.ts", "video/mp2t"),
        ("live/index.m3u8", "application/vnd.apple.mpegurl"),
        ("live/chunk.m4s", "video/iso.segment"),
        ("b.mkv", "video/x-matroska"),
        ("c.webm", "video/webm"),
        ("a.mp4.metadata.json", "application/json"),
        ("notes.xyz", "application/octet-stream"),
        ("no-extension", "application/octet-stream"),
    ],
)
def test_content_type_follows_the_extension(key: str, content_type: str) -> None:
    assert content_type_for(key) == content_type


@pytest.mark.usefixtures("clean_env")
def test_object_tags_are_read_in_url_query_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_OBJECT_TAGS", "site=north%20gate&camera=cam-7&retain=")

    settings = load_settings()

    assert settings.s3_object_tags == (("site", "north gate"), ("camera", "cam-7"), ("retain", ""))


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"S3_OBJECT_TAGS": "a"}, "invalid setting S3_OBJECT_TAGS: Value error, must be URL-query"),
        ({"S3_OBJECT_TAGS": "a=1&a=2"}, "S3_OBJECT_TAGS: Value error, names a key twice"),
        (
            {"S3_OBJECT_TAGS": "&".join(f"k{n}=v" for n in range(10))},
            "S3_OBJECT_TAGS: Value error, has 10 tags; at most 9",
        ),
        ({"S3_OBJECT_TAGS": "k=" + "v" * 257}, "S3_OBJECT_TAGS: Value error, keys must have"),
        ({"S3_OBJECT_TAGS": "k" * 129 + "=v"}, "S3_OBJECT_TAGS: Value error, keys must have"),
        ({"S3_OBJECT_TAGS": "k=a%23b"}, "S3_OBJECT_TAGS: Value error, keys and values may hold"),
        ({"S3_OBJECT_TAGS": "aws:x=1"}, "S3_OBJECT_TAGS: Value error, may not set the key"),
        ({"S3_OBJECT_TAGS": "cefmp4-content=x"}, "S3_OBJECT_TAGS: Value error, may not set"),
        ({"S3_STORAGE_CLASS": "standard ia"}, "invalid setting S3_STORAGE_CLASS"),
        ({"S3_SSE": "aes"}, "invalid setting S3_SSE: Input should be 'AES256' or 'aws:kms'"),
        (
            {"S3_SSE": "AES256", "S3_SSE_KMS_KEY_ID": "k"},
            "invalid setting S3_SSE_KMS_KEY_ID: Value error, is only used with S3_SSE=aws:kms",
        ),
        ({"S3_SSE_KMS_KEY_ID": "k"}, "S3_SSE_KMS_KEY_ID: Value error, is only used with"),
        ({"S3_ADDRESSING_STYLE": "dns"}, "invalid setting S3_ADDRESSING_STYLE: Input should be"),
        ({"S3_CA_BUNDLE": "/nowhere/ca.pem"}, "S3_CA_BUNDLE: Value error, /nowhere/ca.pem is not"),
    ],
)
def test_a_bad_object_setting_stops_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    message = config_error(monkeypatch, **env)

    assert message.startswith("invalid setting ") and says in message
    assert "\n" not in message


@pytest.mark.usefixtures("clean_env")
def test_a_ca_bundle_that_is_not_pem_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")

    message = config_error(monkeypatch, S3_CA_BUNDLE=str(bundle))

    assert message == (
        f"invalid setting S3_CA_BUNDLE: Value error, {bundle} holds no PEM certificate"
    )


async def tags_of(storage: Storage, key: str) -> dict[str, str]:
    answer = await storage._client.get_object_tagging(Bucket=storage.bucket, Key=key)
    return {tag["Key"]: tag["Value"] for tag in answer["TagSet"]}


async def head(storage: Storage, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = await storage._client.head_object(Bucket=storage.bucket, Key=key)
    return answer


async def test_a_recording_and_its_sidecar_are_stored_typed_and_tagged(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    globs = "*.mp4,*.mov"
    processes.start("producer", WATCH_FILTER_GLOBS=globs)
    # As many tags as a site may set: nine, and cefmp4's own makes ten, S3's most.
    tags = "site=north gate&camera=7&" + "&".join(f"k{n}=v{n}" for n in range(7))
    processes.start("consumer", WATCH_FILTER_GLOBS=globs, S3_OBJECT_TAGS=tags)
    (watch_dir / "cam").mkdir()
    (watch_dir / "cam" / "door.mov").write_bytes(b"m" * (PART + 1000))
    (watch_dir / "clip.mp4").write_bytes(b"p" * 1000)

    await wait_completed(log, storage, watch_dir, "cam/door.mov")
    await wait_completed(log, storage, watch_dir, "clip.mp4")

    async def sidecar_written() -> bool:
        return await storage.object_facts("clip.mp4" + SUFFIX) is not None

    await eventually(sidecar_written, 30, "the sidecar written")
    assert (await head(storage, "cam/door.mov"))["ContentType"] == "video/quicktime"
    assert (await head(storage, "clip.mp4"))["ContentType"] == "video/mp4"
    assert (await head(storage, "clip.mp4" + SUFFIX))["ContentType"] == "application/json"
    expected = {"site": "north gate", "camera": "7", **{f"k{n}": f"v{n}" for n in range(7)}}
    recording_tags = await tags_of(storage, "cam/door.mov")
    # cefmp4's own content tag joins the site's tags once the object is verified.
    assert {k: v for k, v in recording_tags.items() if k != "cefmp4-content"} == expected
    assert len(recording_tags) == 10
    assert await tags_of(storage, "clip.mp4" + SUFFIX) == expected


async def test_storage_class_and_encryption_go_with_every_object_cefmp4_creates(
    settings: Settings, services: Services
) -> None:
    # weed mini keeps neither, so what is checked is what S3 is asked for.
    async with s3_edge(services.s3_endpoint_url) as edge:
        asked = settings.model_copy(
            update={
                "s3_endpoint_url": edge.url,
                "s3_storage_class": "STANDARD_IA",
                "s3_sse": "AES256",
                "s3_object_tags": (("site", "a b"),),
            }
        )
        async with Storage(asked) as storage:
            upload_id = await storage.create_upload("cam/x.ts", "s1")
            await storage.abort("cam/x.ts", upload_id)
            await storage.put_object("cam/x.ts" + SUFFIX, b"{}")

    created = edge.headers_of("CreateMultipartUpload")[0]
    put = edge.headers_of("PutObject")[0]
    for headers, content_type in ((created, "video/mp2t"), (put, "application/json")):
        assert headers["content-type"] == content_type
        assert headers["x-amz-storage-class"] == "STANDARD_IA"
        assert headers["x-amz-server-side-encryption"] == "AES256"
        assert headers["x-amz-tagging"] == "site=a+b"
        assert "x-amz-server-side-encryption-aws-kms-key-id" not in headers


async def test_a_kms_key_is_asked_for_with_aws_kms(settings: Settings, services: Services) -> None:
    async with s3_edge(services.s3_endpoint_url) as edge:
        edge.refuse("CreateMultipartUpload", "KMS.NotFoundException", 400)  # no KMS here
        asked = settings.model_copy(
            update={
                "s3_endpoint_url": edge.url,
                "s3_sse": "aws:kms",
                "s3_sse_kms_key_id": SecretStr("alias/cameras"),
            }
        )
        async with Storage(asked) as storage:
            with pytest.raises(StorageError):
                await storage.create_upload("k.mp4", "s1")

    headers = edge.headers_of("CreateMultipartUpload")[0]
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/cameras"


@pytest.mark.parametrize(
    ("style", "url"),
    [
        ("path", "http://localhost:9/b-x/k.mp4"),
        ("virtual", "http://b-x.localhost:9/k.mp4"),
    ],
)
async def test_addressing_style_places_the_bucket_in_the_path_or_the_host(
    settings: Settings, style: str, url: str
) -> None:
    chosen = settings.model_copy(
        update={
            "s3_endpoint_url": "http://localhost:9",
            "s3_bucket_name": "b-x",
            "s3_addressing_style": style,
        }
    )
    async with Storage(chosen) as storage:
        signed = await storage._client.generate_presigned_url(
            "get_object", Params={"Bucket": "b-x", "Key": "k.mp4"}
        )

    assert signed.split("?")[0] == url


async def test_path_style_requests_reach_a_path_style_server(
    settings: Settings, services: Services
) -> None:
    async with s3_edge(services.s3_endpoint_url) as edge:
        chosen = settings.model_copy(
            update={"s3_endpoint_url": edge.url, "s3_addressing_style": "path"}
        )
        async with Storage(chosen) as storage:
            upload_id = await storage.create_upload("p.mp4", "s1")
            await storage.abort("p.mp4", upload_id)

    assert edge.headers_of("CreateMultipartUpload")[0]["host"] == edge.url.split("//")[1]


def make_ca_and_server_cert(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "server.pem")  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "ca.pem", context


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test CA")
async def test_a_private_ca_bundle_lets_uploads_through_tls(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    ca, server_context = make_ca_and_server_cert(tmp_path)
    async with s3_edge(services.s3_endpoint_url, tls=server_context) as edge:
        untrusted = settings.model_copy(update={"s3_endpoint_url": edge.url})
        async with Storage(untrusted) as storage:
            with pytest.raises(StorageError) as refused:
                await storage.create_upload("tls.mp4", "s1")
        trusted = untrusted.model_copy(update={"s3_ca_bundle": ca})
        async with Storage(trusted) as storage:
            upload_id = await storage.create_upload("tls.mp4", "s1")
            etag = await storage.upload_part("tls.mp4", upload_id, 1, b"abc", zlib.crc32(b"abc"))
            await storage.complete("tls.mp4", upload_id, [SentPart(1, etag, zlib.crc32(b"abc"))])
            assert await storage.read_object("tls.mp4") == b"abc"

    assert "SSL" in str(refused.value) or "Certificate" in str(refused.value)
    assert load_settings(s3_ca_bundle=ca).s3_ca_bundle == ca
