"""A local stand-in for Civitai's REST API (docs/civitai.md), for tests, benchmarks and demos.

Real HTTP on loopback: images (with meta, browsingLevel filtering, flat or nested meta), models,
model versions, by-hash lookups, and `/api/download/models/<v>` answering 307 to a signed
storage URL that serves Content-Length, Accept-Ranges, Range/206 and Content-Disposition
(`filename*=UTF-8''` too). Every request is recorded (path, query, Authorization, Range) so
tests can check what a client sent where.

Faults, each for `count` requests (None: until cleared), on paths starting with `path`:
`status` (any status, JSON body and headers, e.g. 429 + Retry-After, 403 early access),
`drop` (storage: send `after_bytes`, then cut the connection), `hold` (storage: send
`after_bytes`, then wait until `release_holds()`; preview images: wait before answering),
`corrupt` (storage: wrong bytes), `no_range` (storage: ignore Range, answer 200) and
`bad_range` (206 from the wrong offset).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

STORAGE = "/storage"


def safetensors_bytes(size: int, seed: int = 0) -> bytes:
    """A file shaped like safetensors (8-byte header length, JSON header, data) of about
    `size` bytes; deterministic for a seed, different between seeds."""
    header = json.dumps({"__metadata__": {"seed": str(seed)}}).encode()
    header += b" " * (-len(header) % 8)
    block = hashlib.sha256(f"mobilesd-fake-{seed}".encode()).digest() * 2048  # 64 KiB
    body_len = max(size - 8 - len(header), 0)
    body = (block * (body_len // len(block) + 1))[:body_len]
    return len(header).to_bytes(8, "little") + header + body


def autov3(data: bytes) -> str | None:
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return None
    return hashlib.sha256(data[8 + n :]).hexdigest()


@dataclass
class FakeFile:
    id: int
    name: str | None
    data: bytes
    type: str = "Model"
    primary: bool = True
    format: str = "SafeTensor"
    disposition: str | None = None  # the raw Content-Disposition to send, when set

    def hashes(self) -> dict[str, str]:
        sha = hashlib.sha256(self.data).hexdigest().upper()
        out = {"SHA256": sha, "AutoV2": sha[:10]}
        v3 = autov3(self.data)
        if v3:
            out["AutoV3"] = v3[:12].upper()
        return out

    def api(self, base: str, version_id: int, *, primary_only: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "sizeKB": len(self.data) / 1024,
            "type": self.type,
            "metadata": {"format": self.format, "size": "pruned", "fp": "fp16"},
            "hashes": self.hashes(),
            "downloadUrl": f"{base}/api/download/models/{version_id}?fileId={self.id}",
        }
        if self.primary or not primary_only:
            item["primary"] = self.primary
        return item


@dataclass
class FakeVersion:
    id: int
    model_id: int
    name: str
    base_model: str
    trained_words: list[str]
    files: list[FakeFile]
    images: list[str] = field(default_factory=list)  # preview file names under /img/


@dataclass
class FakeModel:
    id: int
    name: str
    type: str
    versions: list[FakeVersion] = field(default_factory=list)  # newest first


@dataclass
class FakeImage:
    id: int
    meta: dict[str, Any] | None
    width: int = 832
    height: int = 1216
    nsfw_level: int = 1
    base_model: str = "SDXL 1.0"
    model_version_ids: list[int] = field(default_factory=list)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    range: str | None
    user_agent: str | None


@dataclass
class Fault:
    kind: str
    path: str = ""
    status: int = 0
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    count: int | None = 1
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends a `hold`


class FakeCivitai:
    def __init__(self, *, chunk_size: int = 256 * 1024, require_key: str | None = None) -> None:
        self.models: dict[int, FakeModel] = {}
        self.versions: dict[int, FakeVersion] = {}
        self.files: dict[int, tuple[FakeVersion, FakeFile]] = {}
        self.images: dict[int, FakeImage] = {}
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.chunk_size = chunk_size
        self.require_key = require_key  # downloads need `Bearer <key>` when set
        self.base = ""  # set by the server once it listens
        self._signatures: set[str] = set()
        self._holds: list[asyncio.Event] = []
        self._next = 1000

    def _id(self) -> int:
        self._next += 1
        return self._next

    # -- content -----------------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        *,
        type: str = "LORA",
        base_model: str = "SDXL 1.0",
        files: list[tuple[str | None, bytes]] | None = None,
        version_name: str = "v1.0",
        trained_words: list[str] | None = None,
        preview: bool = True,
        model: FakeModel | None = None,
    ) -> FakeVersion:
        """A model (or a new version of `model`) with its files; the first file is primary."""
        if model is None:
            model = FakeModel(self._id(), name, type)
            self.models[model.id] = model
        version = FakeVersion(
            id=self._id(),
            model_id=model.id,
            name=version_name,
            base_model=base_model,
            trained_words=trained_words or [],
            files=[],
        )
        for index, (file_name, data) in enumerate(files or [(f"{name}.safetensors", b"")]):
            file = FakeFile(self._id(), file_name, data, primary=index == 0)
            version.files.append(file)
            self.files[file.id] = (version, file)
        if preview:
            version.images.append(f"{version.id}.png")
        model.versions.insert(0, version)
        self.versions[version.id] = version
        return version

    def add_image(self, meta: dict[str, Any] | None, **fields: Any) -> int:
        image = FakeImage(self._id(), meta, **fields)
        self.images[image.id] = image
        return image.id

    def add_fault(self, kind: str, **fields: Any) -> Fault:
        fault = Fault(kind, **fields)
        self.faults.append(fault)
        if kind == "hold":
            self._holds.append(fault.release)
        return fault

    def release_holds(self) -> None:
        for event in self._holds:
            event.set()
        self._holds.clear()

    def _take(self, path: str, kinds: tuple[str, ...]) -> Fault | None:
        for fault in self.faults:
            if fault.kind in kinds and path.startswith(fault.path):
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    def storage_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith(STORAGE)]

    # -- JSON shapes -------------------------------------------------------------------------

    def version_api(self, version: FakeVersion) -> dict[str, Any]:
        model = self.models[version.model_id]
        return {
            "id": version.id,
            "modelId": model.id,
            "name": version.name,
            "baseModel": version.base_model,
            "trainedWords": version.trained_words,
            "model": {"name": model.name, "type": model.type, "nsfw": False, "poi": False},
            "files": [f.api(self.base, version.id) for f in version.files],
            "images": [
                {"url": f"{self.base}/img/{n}", "type": "image", "width": 8, "height": 8}
                for n in version.images
            ],
            "downloadUrl": f"{self.base}/api/download/models/{version.id}",
        }

    def model_api(self, model: FakeModel) -> dict[str, Any]:
        versions = []
        for version in model.versions:
            data = self.version_api(version)
            data["files"] = [f.api(self.base, version.id, primary_only=True) for f in version.files]
            data.pop("model")
            versions.append(data)
        return {
            "id": model.id,
            "name": model.name,
            "type": model.type,
            "nsfw": False,
            "creator": {"username": "fake"},
            "tags": [],
            "modelVersions": versions,
        }

    # -- the app -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append(
                Recorded(
                    request.method,
                    request.path,
                    dict(request.query),
                    request.headers.get("Authorization"),
                    request.headers.get("Range"),
                    request.headers.get("User-Agent"),
                )
            )
            fault = self._take(request.path, ("status",))
            if fault is not None:
                return web.json_response(
                    fault.body if fault.body is not None else {"error": "fault"},
                    status=fault.status,
                    headers=fault.headers,
                )
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_get("/api/v1/images", self._images)
        app.router.add_get("/api/v1/models/{id}", self._model)
        app.router.add_get("/api/v1/model-versions/by-hash/{hash}", self._by_hash)
        app.router.add_get("/api/v1/model-versions/{id}", self._version)
        app.router.add_get("/api/download/models/{id}", self._download)
        app.router.add_get(STORAGE + "/{file}/{sig}/{name}", self._storage)
        app.router.add_get("/img/{name}", self._preview)
        return app

    async def _images(self, request: web.Request) -> web.Response:
        q = request.query
        level = int(q.get("browsingLevel") or 1)
        items = []
        wanted = q.get("imageId")
        for image in self.images.values():
            if wanted and str(image.id) != wanted:
                continue
            if not image.nsfw_level & level:
                continue  # the default filter is PG only
            meta: Any = image.meta if q.get("withMeta") == "true" else None
            if meta is not None and q.get("flatMeta") != "true":
                meta = {"id": image.id, "meta": meta}
            items.append(
                {
                    "id": image.id,
                    "url": f"{self.base}/img/{image.id}.png",
                    "width": image.width,
                    "height": image.height,
                    "nsfwLevel": image.nsfw_level,
                    "baseModel": image.base_model,
                    "modelVersionIds": image.model_version_ids,
                    "meta": meta,
                }
            )
        return web.json_response({"items": items, "metadata": {"nextCursor": None}})

    async def _model(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        model = self.models.get(int(raw)) if raw.isdigit() else None
        if model is None:
            return web.json_response({"error": f"No model with id {raw}"}, status=404)
        return web.json_response(self.model_api(model))

    async def _version(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        version = self.versions.get(int(raw)) if raw.isdigit() else None
        if version is None:
            return web.json_response({"error": "Model not found"}, status=404)
        return web.json_response(self.version_api(version))

    async def _by_hash(self, request: web.Request) -> web.Response:
        wanted = request.match_info["hash"].upper()
        for version in sorted(self.versions.values(), key=lambda v: v.id):
            for file in version.files:
                if wanted in file.hashes().values():
                    return web.json_response(self.version_api(version))
        return web.json_response({"error": "Model not found"}, status=404)

    async def _download(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        version = self.versions.get(int(raw)) if raw.isdigit() else None
        if version is None:
            return web.json_response({"error": "File not found"}, status=404)
        if self.require_key and request.headers.get("Authorization") != (
            f"Bearer {self.require_key}"
        ):
            return web.json_response(
                {
                    "error": "Unauthorized",
                    "message": "The creator of this asset requires you to be logged in to "
                    "download it",
                },
                status=401,
            )
        file_id = request.query.get("fileId")
        files = version.files
        if file_id:
            files = [f for f in files if str(f.id) == file_id]
        else:
            files = [f for f in files if f.primary]
        if not files:
            return web.json_response({"error": "File not found"}, status=404)
        file = files[0]
        signature = secrets.token_urlsafe(12)
        self._signatures.add(signature)
        name = quote(file.name or "file", safe="")
        location = f"{self.base}{STORAGE}/{file.id}/{signature}/{name}?X-Amz-Signature={signature}"
        return web.Response(status=307, headers={"Location": location})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["sig"] not in self._signatures:
            return web.Response(status=403, text="<Error>SignatureDoesNotMatch</Error>")
        raw = request.match_info["file"]
        found = self.files.get(int(raw)) if raw.isdigit() else None
        if found is None:
            return web.Response(status=404, text="<Error>NoSuchKey</Error>")
        file = found[1]
        data = file.data
        faults = ("drop", "hold", "corrupt", "no_range", "bad_range")
        fault = self._take(request.path, faults)
        if fault is not None and fault.kind == "corrupt":
            data = bytes(b ^ 0x5A for b in data[:64]) + data[64:]
        start = 0
        range_header = request.headers.get("Range", "")
        if range_header.startswith("bytes=") and not (fault and fault.kind == "no_range"):
            first = range_header[6:].split("-", 1)[0]
            start = int(first) if first.isdigit() else 0
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        disposition = file.disposition or _disposition(file.name or "file")
        response = web.StreamResponse(
            status=206 if start else 200,
            headers={
                "Accept-Ranges": "bytes",
                "Content-Disposition": disposition,
                "Content-Type": "application/octet-stream",
                "ETag": f'"{hashlib.md5(file.data, usedforsecurity=False).hexdigest()}"',
            },
        )
        if start:
            shown = start + 1 if fault and fault.kind == "bad_range" else start
            response.headers["Content-Range"] = f"bytes {shown}-{len(data) - 1}/{len(data)}"
        response.content_length = len(data) - start
        await response.prepare(request)
        sent = start
        step = self.chunk_size
        while sent < len(data):
            if fault is not None and fault.kind in ("drop", "hold") and sent >= fault.after_bytes:
                if fault.kind == "drop":
                    if request.transport is not None:
                        request.transport.close()
                    return response
                release, fault = fault.release, None
                await release.wait()
            end = min(sent + step, len(data))
            if fault is not None and fault.kind in ("drop", "hold"):
                end = min(end, max(fault.after_bytes, sent + 1))
            await response.write(data[sent:end])
            sent = end
        await response.write_eof()
        return response

    async def _preview(self, request: web.Request) -> web.Response:
        fault = self._take(request.path, ("hold",))
        if fault is not None:
            # The preview is fetched after the model file is in place: holding it keeps a
            # download in its last step.
            await fault.release.wait()
        return web.Response(body=_tiny_png(), content_type="image/png")


def _disposition(name: str) -> str:
    """As S3 sends it: an ASCII fallback plus the exact name in RFC 5987 form."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _tiny_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 90, 160)).save(out, format="PNG")
    return out.getvalue()


class FakeCivitaiServer:
    """A FakeCivitai on a loopback port."""

    def __init__(self, fake: FakeCivitai | None = None, host: str = "127.0.0.1") -> None:
        self.fake = fake or FakeCivitai()
        self.host = host
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        runner = web.AppRunner(self.fake.app(), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        self.fake.base = self.url

    async def stop(self) -> None:
        self.fake.release_holds()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
