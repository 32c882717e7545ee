"""`dogscats review`'s routes, on the server's app (dogscats.product.server.create_app): the audit's suspects in the
browser, each decision written at once to the project's data/overrides.csv (dogscats.product.review).

    GET  /review             the page (web/review.html), with this start's token
    GET  /review/state       the suspects with their decisions, the classes, and where the review stands
    POST /review/decide      {"decisions": [{"id": ..., "action": "keep" | "exclude" | "relabel:<class>" | ""}]}
    GET  /review/photo/{id}  a photo of data/split.csv, by its id, as a JPEG at most 480 px
    GET  /review/map/{id}    ?target=<class>: its class activation map for that class, from the project's classifier

A local tool's guard on every route of the app (the serve routes too, under `dogscats review`): the Host must be the
address the server is bound to (a web page elsewhere cannot reach it through a name it controls), a browser's Origin
and Sec-Fetch-Site must be this page's own, and a decision must carry this start's token in X-Review-Token (the page
has it; a page elsewhere cannot read it); the page may not be framed. Refusals are one line of JSON (403; 422 for a
decision prepare would refuse, with its reason); the file is then unchanged."""

import asyncio
import hmac
import io
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from dogscats.data.images import read_image
from dogscats.data.untrusted import DataError
from dogscats.product.classifier import Classifier, ModelError
from dogscats.product.explain import explanations, overlay
from dogscats.product.review import Project, decide, photo_file, progress, suspects

TOKEN_HEADER = "X-Review-Token"
PHOTO_SIDE = 480  # the largest side of a photo or map the page gets, in pixels
SAME_SITE = ("same-origin", "none")  # Sec-Fetch-Site of the page's own requests, and of a typed address


@dataclass(frozen=True)
class Review:
    """What the review routes serve: the project, and this start's token for decisions."""

    project: Project
    token: str


class Decision(BaseModel):
    """One decision: a photo's id and its action ("" removes its decision: undo)."""

    id: str = Field(min_length=1, max_length=500)
    action: str = Field(max_length=500)


class Decisions(BaseModel):
    """The decisions of one key press, applied together (a pair's two photos)."""

    decisions: list[Decision] = Field(min_length=1, max_length=2)


def refusal(status: int, message: str) -> JSONResponse:
    """A refused request: one line of JSON."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def foreign(request: Request) -> str:
    """Why the request does not come from this server's own page (or a program on this machine), or "" if it does:
    the Host, a browser's Origin and Sec-Fetch-Site. The app's middleware asks it of every request under review."""
    port = request.scope["server"][1] if request.scope.get("server") else None
    host = request.headers.get("host", "")
    if host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
        return f"the Host {host!r} is not this server's address (127.0.0.1:{port})"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"http://{host}":
        return f"the Origin {origin!r} is not this page's (http://{host})"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in SAME_SITE:
        return f"a {site} request: only this page may ask"
    return ""


def carries(request: Request, token: str) -> bool:
    """Whether the request carries this start's token (compared in constant time)."""
    return hmac.compare_digest(request.headers.get(TOKEN_HEADER.lower(), "").encode(), token.encode())


def jpeg(image) -> bytes:
    """A PIL image as JPEG bytes at most PHOTO_SIDE pixels a side."""
    image.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def add_review(app: FastAPI, review: Review, page: str, classifier: Callable[[], Classifier | None]) -> None:
    """The review routes on app: page is web/review.html's text, classifier the model served now (None: no maps).
    The app guards every request with foreign() before these routes see it (server.create_app's middleware)."""
    project = review.project

    @app.get("/review")
    async def review_page(request: Request) -> Response:
        """The page, with this start's token."""
        framed = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}  # no clickjacking
        return HTMLResponse(page.replace("{{token}}", review.token), headers=framed)

    @app.get("/review/state")
    async def state(request: Request) -> JSONResponse:
        """The suspects, their decisions and where the review stands."""
        try:
            rows, classes = await asyncio.to_thread(suspects, project)
        except DataError as err:
            return refusal(422, str(err))
        return JSONResponse({"classes": classes, "suspects": rows, "progress": progress(rows)})

    @app.post("/review/decide")
    async def decide_route(request: Request, body: Decisions) -> JSONResponse:
        """Write decisions to data/overrides.csv, or refuse them with prepare's reason (the file unchanged)."""
        if not carries(request, review.token):
            return refusal(403, f"a decision needs this page's token ({TOKEN_HEADER}): reload the page")
        changes = [(decision.id, decision.action.strip()) for decision in body.decisions]
        try:
            written = await asyncio.to_thread(decide, project, changes)
        except DataError as err:
            return refusal(422, str(err))
        return JSONResponse({"decided": written})

    @app.get("/review/photo/{id_:path}")  # an id may hold a / (class folders, tables)
    async def photo(request: Request, id_: str) -> Response:
        """A photo of data/split.csv by its id, as a JPEG."""
        try:
            path = photo_file(project, id_)
        except KeyError:
            return refusal(404, f"no photo has the id {id_!r} in data/split.csv")
        image, error = await asyncio.to_thread(read_image, path, PHOTO_SIDE)
        if image is None:
            return refusal(422, f"{id_}: {error}")
        return Response(await asyncio.to_thread(jpeg, image), media_type="image/jpeg")

    @app.get("/review/map/{id_:path}")
    async def class_map(request: Request, id_: str, target: str) -> Response:
        """A photo's class activation map for the class target, over the photo as the network saw it."""
        model = classifier()
        if model is None:
            return refusal(404, "no classifier loaded (models/classifier): no maps")
        if target not in model.classes:
            return refusal(422, f"{target!r} is not a class ({', '.join(model.classes)})")
        try:
            path = photo_file(project, id_)
        except KeyError:
            return refusal(404, f"no photo has the id {id_!r} in data/split.csv")
        try:
            data = await asyncio.to_thread(map_jpeg, model, path, model.classes.index(target))
        except (ModelError, ValueError) as err:  # a classifier without maps, or a photo it cannot read
            return refusal(422, f"{id_}: {err}")
        return Response(data, media_type="image/jpeg")


def map_jpeg(model: Classifier, path, target: int) -> bytes:
    """A photo's class activation map for the class target, drawn over it, as JPEG bytes; ValueError if unreadable."""
    error = model.images_or_error(path)[1]
    if error:
        raise ValueError(error)
    found = next(iter(explanations(model, [path], [target])))
    return jpeg(overlay(found.image, found.cam))
