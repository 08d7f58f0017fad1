"""The image routes: ``GET /images/json``, ``GET /images/{name}/json``, ``POST /images/load``,
``POST /images/create`` (pull) and ``GET /distribution/{name}/json``, served by this node's image
store (``daemon.images``)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from agent_runtime.images import ImageError
from shoal.base.util import is_rfc3339, parse_rfc3339
from shoal.daemon.daemon import Daemon
from shoal.daemon.http.common import route
from shoal.daemon.http.errors import api_error


def add_routes(app: web.Application, daemon: Daemon) -> None:
    """Register the image routes, served from ``daemon`` (``images``, ``data_root``,
    ``args.max_image_archive_size``)."""

    @route(app, "GET", "/images/json")
    async def images_json(request: web.Request) -> web.Response:
        by_id: dict[str, dict[str, Any]] = {}
        for img in daemon.images.list():
            cur = by_id.setdefault(img.id, image_summary(img))
            for tag in image_summary(img)["RepoTags"]:
                if tag not in cur["RepoTags"]:
                    cur["RepoTags"].append(tag)
        return web.json_response(list(by_id.values()))

    def image_summary(img: Any) -> dict[str, Any]:
        """``ImageSummary`` of the Engine API: ``Created`` in seconds since the epoch (the config
        holds it as RFC 3339, as every image on Docker Hub does)."""
        tags = list(img.familiar_repo_tags or [img.ref])
        return {"Id": img.id, "RepoTags": tags, "RepoDigests": list(img.repo_digests), "ParentId": "",
                "Created": int(parse_rfc3339(img.created)), "Size": img.size, "SharedSize": -1,
                "VirtualSize": img.size, "Labels": (img.config or {}).get("Labels") or {}, "Containers": -1}

    @route(app, "GET", "/images/{name:.*}/json")
    async def image_inspect(request: web.Request) -> web.Response:
        """``ImageInspect``: ``Created`` is the config's RFC 3339 time as stored (Go's zero time
        when the image has none, as Docker prints it), ``RootFS.Layers`` the diff_ids."""
        name = request.match_info["name"]
        try:
            img = daemon.images.get(name)
        except Exception:  # an unparsable reference is simply not an image we have
            img = None
        if img is None:
            return api_error(404, f"No such image: {name}")
        out = image_summary(img)
        created = img.created if is_rfc3339(img.created) else "0001-01-01T00:00:00Z"
        return web.json_response({
            "Id": out["Id"], "RepoTags": out["RepoTags"], "RepoDigests": out["RepoDigests"], "Parent": "",
            "Comment": "", "Created": created, "Container": "",
            "DockerVersion": "", "Author": "", "Config": img.config, "Architecture": img.architecture,
            "Os": img.os_name, "Size": img.size, "VirtualSize": img.size,
            "GraphDriver": {"Name": "overlay2", "Data": {"LowerDir": ":".join(str(p) for p in img.layers)}},
            "RootFS": {"Type": "layers", "Layers": list(img.diff_ids)},
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"}})

    @route(app, "POST", "/images/load")
    async def images_load(request: web.Request) -> web.StreamResponse:

        cap = int(daemon.args.max_image_archive_size)
        too_big = (f"the image archive is larger than this daemon accepts ({cap} bytes; shoald "
                   "--max-image-archive-size)")
        if request.content_length is not None and request.content_length > cap:
            return api_error(413, too_big)
        fd, tmp = tempfile.mkstemp(dir=daemon.data_root, prefix=".load-", suffix=".tar")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > cap:
                        return api_error(413, too_big)
                    f.write(chunk)
            try:
                refs = await asyncio.to_thread(daemon.images.load, Path(tmp), "the uploaded image archive")
            except ImageError as e:
                return api_error(400, str(e))
        finally:
            os.unlink(tmp)
        text = "".join(json.dumps({"stream": f"Loaded image: {r}\n"}) + "\n" for r in refs)
        # exactly "application/json" (no charset): the docker CLI renders the stream only then
        return web.Response(body=text.encode(), content_type="application/json")

    @route(app, "POST", "/images/create")
    async def images_create(request: web.Request) -> web.StreamResponse:

        ref = request.query.get("fromImage", "")
        tag = request.query.get("tag", "")
        if not ref:
            return api_error(400, "fromImage is required (the image to pull)")
        if tag and not tag.startswith("sha256:"):
            ref = f"{ref}:{tag}"
        elif tag:
            ref = f"{ref}@{tag}"
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write((json.dumps({"status": f"Pulling from {ref}"}) + "\n").encode())
        try:
            img = await daemon.images.pull(ref)
            msg = {"status": f"Digest: {img.id}"}
            await resp.write((json.dumps(msg) + "\n").encode())
            await resp.write((json.dumps({"status": f"Status: Downloaded image for {img.ref}"})
                              + "\n").encode())
        except ImageError as e:
            await resp.write((json.dumps({"errorDetail": {"message": str(e)}, "error": str(e)})
                              + "\n").encode())
        await resp.write_eof()
        return resp

    @route(app, "GET", "/distribution/{name:.*}/json")
    async def distribution(request: web.Request) -> web.Response:

        name = request.match_info["name"]
        resolve = getattr(daemon.images, "resolve", None)
        if resolve is None:
            return api_error(501, "digest resolution is not supported by this daemon")
        try:
            return web.json_response(await resolve(name))
        except ImageError as e:
            return api_error(404, str(e))
