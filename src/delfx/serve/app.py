"""The HTTP API over one collection (FastAPI): search by upload or by name, add, remove.

Every error is JSON ``{"error": message}`` with its status: 400 bad input, 401 a write without
the token, 404 an unknown name, 409 a name that exists, 413 an upload or image too large, 415
not an image. Nothing returns a traceback.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from delfx.engine.extractor import Described
from delfx.errors import InputError
from delfx.serve.library import Library, safe_name

logger = logging.getLogger(__name__)

MAX_UPLOAD = 20 * 1024 * 1024
MAX_K = 1000
THUMB = 256


def _image_error(exc: InputError) -> HTTPException:
    text = str(exc)
    if "megapixels" in text:
        return HTTPException(413, text)
    return HTTPException(415, text)


def _box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None or text == "":
        return None
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        raise HTTPException(400, f"box '{text}': expected x0,y0,x1,y1") from None
    if len(v) != 4 or not (v[0] < v[2] and v[1] < v[3]):
        raise HTTPException(400, f"box '{text}': expected x0,y0,x1,y1 with x0 < x1, y0 < y1")
    return v[0], v[1], v[2], v[3]


async def _read(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{upload.filename}: upload larger than {limit} bytes")
    return data


def _decode(name: str, data: bytes) -> np.ndarray:
    from delfx.io.images import read_image

    try:
        return read_image(Path(name or "upload"), data=data)
    except InputError as exc:
        raise _image_error(exc) from None


def create_app(
    folder: str | os.PathLike[str],
    *,
    token: str | None = None,
    max_upload: int = MAX_UPLOAD,
    device: str = "cpu",
) -> FastAPI:
    """The app over the collection in ``folder`` (opened now, once).

    Args:
        folder: a collection (``delfx index create``).
        token: when given, adds and removals need ``Authorization: Bearer <token>``.
        max_upload: the largest upload in bytes.
        device: torch device of the global network.
    """
    lib = Library(folder, device)
    app = FastAPI(title="delfx", summary="landmark image search over one collection")
    app.state.library = lib
    thumbs: dict[str, bytes] = {}

    def need_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is not None and authorization != f"Bearer {token}":
            raise HTTPException(401, "this needs the server's token (Authorization: Bearer ...)")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=400)

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    def results(result: Any, offset: int, k: int) -> dict[str, Any]:
        hits = result.hits[offset : offset + k]
        return {
            "results": [
                {
                    "rank": offset + i + 1,
                    "name": h.name,
                    "score": h.score,
                    "inliers": h.inliers,
                    "thumbnail": f"/api/images/{h.name}/thumbnail",
                }
                for i, h in enumerate(hits)
            ],
            "timings_ms": {k.removesuffix("_ms"): round(v, 2) for k, v in result.timings.items()},
        }

    def check_k(k: int, offset: int, verify: int | None) -> None:
        if not 1 <= k <= MAX_K:
            raise HTTPException(400, f"k must be in 1..{MAX_K}, got {k}")
        if offset < 0 or (verify is not None and verify < 0):
            raise HTTPException(400, "offset and verify must be >= 0")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "images": len(lib.searcher())}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        s = lib.searcher()
        index_bytes = 0 if s.index is None else int(s.index.nbytes())
        return {
            "images": len(s),
            "removed": int((~s.live).sum()),
            "pipeline": s.spec.name,
            "index_memory_bytes": index_bytes,
            "startup_s": round(lib.startup_s, 3),
        }

    @app.post("/api/search")
    async def search_upload(
        image: Annotated[UploadFile, File()],
        k: Annotated[int, Form()] = 10,
        offset: Annotated[int, Form()] = 0,
        verify: Annotated[int | None, Form()] = None,
        box: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        check_k(k, offset, verify)
        data = await _read(image, max_upload)
        array = await run_in_threadpool(_decode, image.filename or "upload", data)
        s = lib.searcher()
        result = await run_in_threadpool(  # heavy: off the event loop
            s.query, array, top=offset + k, verify=verify, box=_box(box), label="upload"
        )
        return {"query": image.filename, **results(result, offset, k)}

    @app.get("/api/search")
    def search_name(
        name: str, k: int = 10, offset: int = 0, verify: int | None = None
    ) -> dict[str, Any]:
        check_k(k, offset, verify)
        s = lib.searcher()
        try:
            (i,) = s.ids_of([name])
        except InputError:
            raise HTTPException(404, f"no image named '{name}'") from None
        vec = None if s.global_matrix is None else s.global_matrix[i]
        described = Described(s.features.get(name), vec)
        result = s.query_features(described, top=offset + k, verify=verify)
        return {"query": name, **results(result, offset, k)}

    @app.post("/api/images", dependencies=[Depends(need_token)])
    async def add_images(
        images: Annotated[list[UploadFile], File()],
        names: Annotated[list[str] | None, Form()] = None,
        replace: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        if names is not None and len(names) != len(images):
            raise HTTPException(400, f"{len(names)} names for {len(images)} images")
        files = []
        for i, upload in enumerate(images):
            name = names[i] if names else (upload.filename or "")
            try:
                safe_name(name)
            except InputError as exc:
                raise HTTPException(400, str(exc)) from None
            data = await _read(upload, max_upload)
            _decode(name, data)  # sniffed: refused before anything is written
            files.append((name, data))
        try:
            added = await run_in_threadpool(lib.add, files, replace=replace)
        except InputError as exc:
            status = 409 if "already in" in str(exc) else 400
            raise HTTPException(status, str(exc).splitlines()[0]) from None
        return {"added": added}

    @app.delete("/api/images/{name:path}", dependencies=[Depends(need_token)])
    def remove_image(name: str) -> dict[str, Any]:
        try:
            lib.remove(name)
        except InputError as exc:
            if "no image named" in str(exc):
                raise HTTPException(404, f"no image named '{name}'") from None
            raise
        thumbs.pop(name, None)
        return {"removed": name}

    def photo(name: str) -> Path:
        try:
            safe_name(name)
        except InputError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            lib.searcher().ids_of([name])
            return lib.photo_path(name)
        except (InputError, KeyError):
            raise HTTPException(404, f"no image named '{name}'") from None

    @app.get("/api/images/{name:path}/thumbnail")
    def thumbnail(name: str) -> Response:
        if name not in thumbs:
            from PIL import Image

            from delfx.io.images import read_image

            im = Image.fromarray(read_image(photo(name), max_side=THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            thumbs[name] = buf.getvalue()
        return Response(thumbs[name], media_type="image/jpeg")

    @app.get("/api/images/{name:path}")
    def image_file(name: str) -> Response:
        path = photo(name)
        media = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        return Response(path.read_bytes(), media_type=media)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "page.html").read_text(encoding="utf-8"))

    @app.get("/api/matches")
    def matches(query: Annotated[str, Query()], name: Annotated[str, Query()]) -> dict[str, Any]:
        s = lib.searcher()
        try:
            s.ids_of([query, name])
        except InputError as exc:
            raise HTTPException(404, str(exc)) from None
        return match_payload(s, s.features.get(query), query, name)

    @app.post("/api/matches")
    async def matches_upload(
        image: Annotated[UploadFile, File()],
        name: Annotated[str, Form()],
        box: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        s = lib.searcher()
        try:
            s.ids_of([name])
        except InputError as exc:
            raise HTTPException(404, str(exc)) from None
        array = _decode(image.filename or "upload", await _read(image, max_upload))
        if s.extractor is None:
            raise HTTPException(400, f"pipeline '{s.spec.name}' cannot describe photos")
        q = await run_in_threadpool(s.extractor.local, array, _box(box))
        return await run_in_threadpool(match_payload, s, q, image.filename or "upload", name)

    def match_payload(s: Any, q: Any, query: str, name: str) -> dict[str, Any]:
        from delfx.verify.ransac import verify_pair

        d = s.features.get(name)
        conf = s.spec.pipeline.rerank
        res = verify_pair(q, d, conf.ransac, ratio=conf.ratio)
        pairs = [] if res.inlier_matches is None else res.inlier_matches
        return {
            "query": {"name": query, "size": list(q.image_size)},
            "image": {"name": name, "size": list(d.image_size)},
            "inliers": int(res.inliers),
            "matches": [
                [*map(float, q.keypoints[a]), *map(float, d.keypoints[b])] for a, b in pairs
            ],
        }

    return app


def app_from_env() -> FastAPI:
    """The app of a worker process started by ``delfx serve --workers N`` (settings in the
    environment, set by the parent)."""
    return create_app(
        os.environ["DELFX_SERVE_DIR"],
        token=os.environ.get("DELFX_SERVE_TOKEN") or None,
        max_upload=int(os.environ.get("DELFX_SERVE_MAX_UPLOAD", MAX_UPLOAD)),
        device=os.environ.get("DELFX_SERVE_DEVICE", "cpu"),
    )
