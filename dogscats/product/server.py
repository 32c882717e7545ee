"""`dogscats serve`: the exported classifier behind a local HTTP API and an upload page (FastAPI on Starlette).

    POST /predict   multipart `files` (one or many photos): per photo its name, every class's probability, the class,
                    and an error for a photo that cannot be read; the model's version. ?maps=true adds each readable
                    photo's class activation map (a JPEG data: URI), as the upload page shows it.
    GET  /healthz   alive;  GET /readyz  a model loaded and checked (503 until one is);  GET /metrics  Prometheus text
    GET  /          the upload page, from the package's web/ folder: nothing is fetched from elsewhere
    /review...      with a project (`dogscats review`): its audit's suspects and the decisions (review_api)

Photos from concurrent requests run through the network together (batching); the model folder is watched and a new
export swapped in (reload). Nothing a request sends is written to disk: the body is read into memory up to the upload
limit, multipart parts included. Every refusal is a 4xx (503 past the timeout) with one line of JSON: {"error": ...}."""

import asyncio
import contextlib
import hmac
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from dogscats.base.scoring import predicted_class
from dogscats.engine.workers import lowest_priority
from dogscats.product.batching import Batcher
from dogscats.product.classifier import Classifier, ModelError
from dogscats.product.explain import explanations, overlay_data_uri
from dogscats.product.reload import ModelWatcher
from dogscats.product.review_api import Review, add_review, foreign
from dogscats.product.serve_config import CONFIG_VARIABLE, ServeConfig, from_environment

WEB = Path(__file__).parent / "web"
FIELD = "files"  # the multipart field of the photos
OPEN = ("/healthz", "/readyz", "/", "/static/")  # served without the token: no model output, no user data


class Refused(Exception):
    """A request refused: its status and one line."""

    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (two apps in one process do not share them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dogscats_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("dogscats_request_seconds", "Request latency", ["route"], registry=r)
        self.photos = Counter("dogscats_photos", "Photos received", ["outcome"], registry=r)
        self.errors = Counter("dogscats_errors", "Refused requests and unreadable photos", ["kind"], registry=r)
        buckets = (1, 2, 4, 8, 16, 32, 64, 128)
        self.batch = Histogram("dogscats_batch_photos", "Photos a run of the network", registry=r, buckets=buckets)
        self.batch_seconds = Histogram("dogscats_batch_seconds", "Seconds a run of the network", registry=r)
        self.model = Gauge("dogscats_model", "The model served (1) by its version", ["version"], registry=r)
        self.reloads = Counter("dogscats_model_loads", "Model folders loaded or refused", ["result"], registry=r)

    def batch_ran(self, photos: int, seconds: float) -> None:
        """A run of the network."""
        self.batch.observe(photos)
        self.batch_seconds.observe(seconds)

    def served(self, version: str) -> None:
        """A new model is served: it alone has the value 1."""
        self.model.clear()
        self.model.labels(version).set(1)
        self.reloads.labels("loaded").inc()


def problem_response(status: int, message: str, version: str = "") -> JSONResponse:
    """A refusal: one line of JSON. A body refused as too large is not read to its end: the connection closes."""
    headers = {"X-Model-Version": version} if version else {}
    if status == 413:
        headers["Connection"] = "close"
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def too_large(limit: int) -> Refused:
    """The refusal of a body over the limit."""
    return Refused(413, f"the upload is over the limit of {limit} bytes (max_upload_mb)", "too_large")


async def limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk, refused (413) as soon as it passes limit bytes."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


async def uploads(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The photos of a multipart request as (name, bytes), read into memory within the limits; Refused otherwise."""
    limit = int(config.max_upload_mb * 1024 * 1024)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Refused(415, f"send the photos as multipart/form-data, field {FIELD!r}", "bad_request")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large(limit)
    parser = MultiPartParser(
        request.headers,
        limited(request.stream(), limit),
        max_files=config.max_files,
        max_fields=config.max_files,
        max_part_size=limit,
    )
    parser.spool_max_size = limit + 1  # each file stays in memory: the body is never over the limit
    try:
        form = await parser.parse()
    except MultiPartException as err:
        kind = "too_many_files" if "Too many files" in str(err) else "bad_request"
        status = 413 if kind == "too_many_files" else 400
        hint = f" (max_files {config.max_files})" if kind == "too_many_files" else ""
        raise Refused(status, f"{err}{hint}", kind) from None
    files = []
    for name, value in form.multi_items():
        if name != FIELD or not isinstance(value, UploadFile):
            raise Refused(
                400, f"unexpected form field {name!r}: send photos as files in the field {FIELD!r}", "bad_request"
            )
        files.append((value.filename or "", await value.read()))
    if not files:
        raise Refused(400, f"no photos: send them as files in the multipart field {FIELD!r}", "bad_request")
    return files


def photo_row(classifier: Classifier, name: str, p: np.ndarray | None, error: str) -> dict:
    """One photo's answer: its name, each class's probability, the class, and why it could not be read."""
    if p is None:
        return {"name": name, "probabilities": None, "class": None, "error": error}
    chosen = classifier.classes[int(predicted_class(p[None])[0])]
    return {
        "name": name,
        "probabilities": dict(zip(classifier.classes, map(float, p), strict=True)),
        "class": chosen,
        "error": "",
    }


def create_app(config: ServeConfig, review: Review | None = None) -> FastAPI:
    """The server's app: the API and the upload page over the classifier in config.model; with review, the review
    page and its routes over that project too (`dogscats review`)."""
    metrics = Metrics()
    refused = metrics.reloads.labels("refused")
    watcher = ModelWatcher(Path(config.model), config.threads, config.reload_s, metrics.served, lambda _: refused.inc())
    batcher = Batcher(config.window_ms / 1000, config.max_batch, observe=metrics.batch_ran)
    decoders = ThreadPoolExecutor(config.decoders or os.cpu_count() or 1, "decode", initializer=lowest_priority)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(watcher.load)
        tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(watcher.watch())]
        yield
        for task in tasks:
            task.cancel()
        decoders.shutdown(cancel_futures=True)

    app = FastAPI(title="dogscats", lifespan=lifespan, docs_url=None, redoc_url=None)  # /docs would load a CDN's script
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (404, 405) as every other: one line of JSON."""
        response = problem_response(err.status_code, f"{request.method} {request.url.path}: {err.detail}")
        response.headers.update(err.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """A query parameter of the wrong type: 422, one line naming it."""
        found = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return problem_response(422, found)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        """The token check, the model version header, and every request counted and timed."""
        start, route = time.perf_counter(), request.url.path
        route = route if route in ("/predict", "/healthz", "/readyz", "/metrics", "/") else "other"
        classifier = watcher.serving.classifier
        if config.token and not is_open(request.url.path) and not authorised(request, config.token):
            metrics.errors.labels("unauthorized").inc()
            response = problem_response(401, "a bearer token is required: Authorization: Bearer <token>")
        elif review is not None and (why := foreign(request)):  # a local tool: its own page and this machine only
            response = problem_response(403, why)
        else:
            response = await call_next(request)
        if classifier and "X-Model-Version" not in response.headers:
            response.headers["X-Model-Version"] = classifier.version
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive."""
        return {"alive": True}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when a model is loaded and checked; why not, or why the last new folder was refused."""
        serving = watcher.serving
        body = {"ready": serving.classifier is not None, "problem": serving.problem}
        if serving.classifier:
            body |= {"version": serving.classifier.version, "classes": serving.classifier.classes}
        return JSONResponse(body, status_code=200 if serving.classifier else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """The metrics, in Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page() -> FileResponse:
        """The upload page."""
        return FileResponse(WEB / "index.html")

    if review is not None:
        add_review(app, review, (WEB / "review.html").read_text(), lambda: watcher.serving.classifier)

    @app.post("/predict")
    async def predict(request: Request, maps: bool = False) -> JSONResponse:
        """Per photo: its name, every class's probability, the class, or why it cannot be read; the model's version."""
        classifier = watcher.serving.classifier  # the model this request runs on, whatever is swapped in meanwhile
        if classifier is None:
            return problem_response(503, f"no model loaded: {watcher.serving.problem}")
        try:
            async with asyncio.timeout(config.timeout_s):
                rows = await answer(request, classifier, maps)
        except Refused as err:
            metrics.errors.labels(err.kind).inc()
            return problem_response(err.status, str(err), classifier.version)
        except TimeoutError:
            metrics.errors.labels("timeout").inc()
            return problem_response(503, f"the request took over {config.timeout_s} s (timeout_s)", classifier.version)
        except ClientDisconnect:
            metrics.errors.labels("bad_request").inc()
            return problem_response(400, "the client disconnected before the upload ended", classifier.version)
        except Exception as err:  # ModelError, or anything else: one line of JSON, counted, and the server goes on
            metrics.errors.labels("model").inc()
            message = str(err) if isinstance(err, ModelError) else f"{type(err).__name__}: {err}"
            return problem_response(500, message, classifier.version)
        body = {"version": classifier.version, "classes": classifier.classes, "photos": rows}
        return JSONResponse(body, headers={"X-Model-Version": classifier.version})

    async def answer(request: Request, classifier: Classifier, maps: bool) -> list[dict]:
        """The rows of a request's photos: decoded in parallel, each through the batcher."""
        files = await uploads(request, config)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(decoders, classifier.images_or_error, data) for _, data in files)
        )
        for _, error in decoded:
            metrics.photos.labels("unreadable" if error else "ok").inc()
            if error:
                metrics.errors.labels("unreadable").inc()
        p = await asyncio.gather(*(batcher.probabilities(classifier, images) for images, error in decoded if not error))
        found = iter(p)
        rows = [
            photo_row(classifier, name, None if error else next(found), error)
            for (name, _), (_, error) in zip(files, decoded, strict=True)
        ]
        if maps:
            readable = [i for i, row in enumerate(rows) if not row["error"]]
            targets = [classifier.classes.index(rows[i]["class"]) for i in readable]
            try:
                uris = await asyncio.to_thread(maps_of, classifier, [files[i][1] for i in readable], targets)
            except ModelError as err:  # a classifier exported without maps: the probabilities still answer
                uris = [""] * len(readable)
                for i in readable:
                    rows[i]["map_error"] = str(err)
            for i, uri in zip(readable, uris, strict=True):
                rows[i]["map"] = uri
        return rows

    return app


def maps_of(classifier: Classifier, photos: list[bytes], targets: list[int]) -> list[str]:
    """The readable photos' class activation maps for their classes, as the page shows them (320 px JPEG data: URIs)."""
    return [overlay_data_uri(explanation, 320) for explanation in explanations(classifier, photos, targets)]


def is_open(path: str) -> bool:
    """Whether the path is served without the token."""
    return path in OPEN or path.startswith("/static/")


def authorised(request: Request, token: str) -> bool:
    """Whether the request carries the bearer token (compared in constant time)."""
    scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def run(config: ServeConfig, host: str, port: int, workers: int = 1, review: Review | None = None) -> None:
    """Serve until interrupted: this process alone, or `workers` processes (uvicorn's), each with its own model."""
    import uvicorn

    if workers == 1:
        uvicorn.run(create_app(config, review), host=host, port=port)
        return
    os.environ[CONFIG_VARIABLE] = config.to_json()
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, host=host, port=port, workers=workers)


@contextlib.contextmanager
def background(config: ServeConfig, host: str = "127.0.0.1", review: Review | None = None) -> Iterator[str]:
    """The server in a thread of this process on a free port of `host`, for the block: its base URL (tests, bench)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(config, review), host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start (see its log above)")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()


def app_from_environment() -> FastAPI:
    """The app of the settings in CONFIG_VARIABLE: each of uvicorn's worker processes builds its own."""
    return create_app(from_environment())
