"""A pass-through proxy in front of the tests' S3 server that can refuse chosen operations.

For what the S3 server itself will not do: a narrow IAM policy, or an answer it never gives
(`weed mini` picks the part version a Complete names, so it never says InvalidPart). Every
other request goes through unchanged, Host header included, so signatures still hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from ops.local_services import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


_TAGGING_VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}


def operation(request: web.Request) -> str:
    """The S3 operation a request is, by method, path and query (path-style addressing)."""
    has_key = "/" in request.path.strip("/")
    query = request.query
    if request.method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if has_key and "tagging" in query:
        return f"{_TAGGING_VERBS.get(request.method, request.method)}ObjectTagging"
    if request.method == "PUT":
        if not has_key:
            return "CreateBucket"
        if "partNumber" not in query:
            return "PutObject"
        return "UploadPartCopy" if "x-amz-copy-source" in request.headers else "UploadPart"
    if request.method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId" in query else "Post"
    if request.method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "Delete"
    if request.method == "GET":
        if not has_key:
            return "ListMultipartUploads" if "uploads" in query else "ListObjects"
        return "ListParts" if "uploadId" in query else "GetObject"
    return request.method


@dataclasses.dataclass
class Refusal:
    operation: str
    code: str
    status: int
    times: int | None  # None: every time
    refused: int = 0


@dataclasses.dataclass
class S3Edge:
    target: str
    url: str = ""
    refusals: list[Refusal] = dataclasses.field(default_factory=list)
    delays: dict[str, float] = dataclasses.field(default_factory=dict)
    seen: list[str] = dataclasses.field(default_factory=list)
    # (operation, request headers with lower-case names), in the order they came
    requests: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)

    def delay(self, operation: str, seconds: float) -> None:
        """Answer `operation` only after `seconds` (a slow link); 0 ends the delay."""
        self.delays[operation] = seconds

    def refuse(
        self,
        operation: str,
        code: str = "AccessDenied",
        status: int = 403,
        times: int | None = None,
    ) -> Refusal:
        refusal = Refusal(operation, code, status, times)
        self.refusals.append(refusal)
        return refusal

    def allow_all(self) -> None:
        self.refusals.clear()

    def count(self, operation: str) -> int:
        return self.seen.count(operation)

    def headers_of(self, operation: str) -> list[dict[str, str]]:
        """The headers of every `operation` request seen, oldest first."""
        return [headers for name, headers in self.requests if name == operation]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = operation(request)
        self.seen.append(name)
        self.requests.append((name, {k.lower(): v for k, v in request.headers.items()}))
        for refusal in self.refusals:
            if refusal.operation == name and (
                refusal.times is None or refusal.refused < refusal.times
            ):
                refusal.refused += 1
                await request.read()
                return _error(refusal.code, refusal.status)
        body = await request.read()
        if self.delays.get(name):
            await asyncio.sleep(self.delays[name])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                self.target + request.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as answer,
        ):
            reply = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            if request.method == "HEAD":
                return web.Response(status=answer.status, headers=out)  # its Content-Length kept
            out.pop("Content-Length", None)
            return web.Response(status=answer.status, headers=out, body=reply)


def _error(code: str, status: int) -> web.Response:
    xml = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<Error><Code>{code}</Code><Message>refused at the edge</Message></Error>"
    )
    return web.Response(status=status, body=xml.encode(), content_type="application/xml")


@asynccontextmanager
async def s3_edge(target: str, tls: ssl.SSLContext | None = None) -> AsyncIterator[S3Edge]:
    """The edge on a free loopback port; with `tls`, it answers https with that context."""
    edge = S3Edge(target.rstrip("/"))
    app = web.Application(client_max_size=6 * 1024**3)
    app.router.add_route("*", "/{tail:.*}", edge._handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls)
    await site.start()
    edge.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield edge
    finally:
        await runner.cleanup()
