"""`dogscats serve`: the API through Starlette's test client, and through uvicorn on 127.0.0.1 where the socket
matters (bodies past the limit, concurrent requests); the hand-built graphs of test_classifier, whose probabilities
differ from photo to photo. The page in a real browser is tests/product/test_page.py."""

import asyncio
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx2 as httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from dogscats.product import reload  # noqa: E402
from dogscats.product.batching import Batcher  # noqa: E402
from dogscats.product.classifier import Classifier, ModelError, stacked  # noqa: E402
from dogscats.product.cli import main as cli  # noqa: E402
from dogscats.product.reload import ModelWatcher, fingerprint  # noqa: E402
from dogscats.product.serve_config import ServeConfig  # noqa: E402
from dogscats.product.server import WEB, background, create_app  # noqa: E402

from ..conftest import bomb_png  # noqa: E402
from .test_classifier import WEIGHTS, write_model  # noqa: E402


def client(model: Path, **settings) -> TestClient:
    """A test client of the server over the model folder (its lifespan runs inside `with`)."""
    return TestClient(create_app(ServeConfig(model=str(model), **settings)))


def upload(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    """Files as the multipart field `files`."""
    return [("files", file) for file in files]


def photo_files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return upload(*((path.name, path.read_bytes()) for path in paths))


def test_predict_gives_every_class_probability_of_each_photo_as_the_classifier_does(model, photos):
    expected, _ = Classifier.load(model).predict(photos)
    with client(model) as c:
        response = c.post("/predict", files=photo_files(photos))
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == Classifier.load(model).version == response.headers["x-model-version"]
    assert [row["name"] for row in body["photos"]] == [p.name for p in photos]
    served = np.array([[row["probabilities"][c] for c in body["classes"]] for row in body["photos"]])
    np.testing.assert_allclose(served, expected, atol=1e-6, rtol=0)
    assert len({round(float(p), 4) for p in served[:, 1]}) == len(photos)  # photos differ: no row was mixed up
    assert [row["class"] for row in body["photos"]] == [body["classes"][int(p >= 0.5)] for p in served[:, 1]]


def test_a_photo_that_cannot_be_read_gets_its_reason_and_the_others_their_probabilities(model, photos, tmp_path):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    truncated = photos[0].read_bytes()[:200]
    bomb = bomb_png(tmp_path / "bomb.png").read_bytes()
    bad = [("eps.jpg", eps), ("truncated.jpg", truncated), ("bomb.png", bomb), ("empty.jpg", b""), ("x.jpg", b"no")]
    with client(model) as c:
        body = c.post("/predict", files=upload(*bad, (photos[1].name, photos[1].read_bytes()))).json()
        assert c.post("/predict", files=photo_files(photos[:1])).status_code == 200  # and it keeps serving
    rows = {row["name"]: row for row in body["photos"]}
    assert "looks like EPS" in rows["eps.jpg"]["error"] and rows["eps.jpg"]["probabilities"] is None
    assert "truncated" in rows["truncated.jpg"]["error"] or "OSError" in rows["truncated.jpg"]["error"]
    assert "DecompressionBomb" in rows["bomb.png"]["error"] or "exceeds limit" in rows["bomb.png"]["error"]
    assert rows["empty.jpg"]["error"] and rows["x.jpg"]["error"] and "\n" not in rows["x.jpg"]["error"]
    assert rows[photos[1].name]["error"] == "" and rows[photos[1].name]["class"] in body["classes"]


@pytest.mark.parametrize(
    ("request_args", "status", "words"),
    [
        ({"content": b"x" * 100, "headers": {"content-type": "application/octet-stream"}}, 415, "multipart/form-data"),
        ({"data": {"note": "hi"}, "files": upload(("a.jpg", b"1"))}, 400, "unexpected form field 'note'"),
        ({"files": [("photo", ("a.jpg", b"1"))]}, 400, "unexpected form field 'photo'"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, ""),
        ({"content": b"", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
    ],
)
def test_a_malformed_request_gets_a_4xx_with_one_line(model, request_args, status, words):
    with client(model) as c:
        response = c.post("/predict", **request_args)
        assert c.get("/healthz").status_code == 200
    assert response.status_code == status, response.text
    assert words in response.json()["error"] and "\n" not in response.json()["error"]


def test_an_unknown_route_a_wrong_method_or_a_bad_query_get_one_line_too(model, photos):
    with client(model) as c:
        answers = [c.get("/nowhere"), c.get("/predict"), c.post("/predict?maps=perhaps", files=photo_files(photos[:1]))]
    assert [a.status_code for a in answers] == [404, 405, 422]
    assert answers[1].headers["allow"] == "POST"
    assert answers[0].json()["error"] == "GET /nowhere: Not Found"
    assert "maps" in answers[2].json()["error"] and all("\n" not in a.json()["error"] for a in answers)


def test_a_request_past_its_timeout_gets_503_and_the_server_keeps_serving(model, photos):
    with client(model, timeout_s=1e-4, window_ms=50) as c:
        late = c.post("/predict", files=photo_files(photos))
        metrics = c.get("/metrics").text
    assert late.status_code == 503 and "timeout_s" in late.json()["error"]
    assert 'dogscats_errors_total{kind="timeout"} 1.0' in metrics


def test_the_most_files_a_request_is_a_limit(model, photos):
    with client(model, max_files=3) as c:
        too_many = c.post("/predict", files=upload(*[("t.jpg", b"x")] * 10_000))
        assert c.post("/predict", files=photo_files(photos[:3])).status_code == 200
    assert too_many.status_code == 413 and "max_files 3" in too_many.json()["error"]


def test_an_upload_over_the_limit_is_refused_by_its_length(model, photos):
    with client(model, max_upload_mb=0.01) as c:
        response = c.post("/predict", files=upload(("big.jpg", b"\xff" * 20_000)))
        metrics = c.get("/metrics").text
    assert response.status_code == 413 and "10485 bytes" in response.json()["error"]
    assert 'dogscats_errors_total{kind="too_large"} 1.0' in metrics


def test_the_token_is_asked_of_everything_but_the_page_and_the_probes(model, photos):
    with client(model, token="s3cret") as c:
        assert c.post("/predict", files=photo_files(photos[:1])).status_code == 401
        assert (
            c.post("/predict", files=photo_files(photos[:1]), headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        assert c.get("/metrics").status_code == 401
        assert (
            c.get("/metrics", headers={"Authorization": "bearer  s3cret "}).status_code == 200
        )  # the scheme: any case
        ok = c.post("/predict", files=photo_files(photos[:1]), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert [c.get(path).status_code for path in ("/healthz", "/readyz", "/", "/static/app.js")] == [200] * 4


def test_no_model_is_not_ready_and_says_why(tmp_path, photos):
    with client(tmp_path / "nothing") as c:
        ready = c.get("/readyz")
        predict = c.post("/predict", files=photo_files(photos[:1]))
        assert c.get("/healthz").json() == {"alive": True}
    assert ready.status_code == 503 and "settings.json not found" in ready.json()["problem"]
    assert predict.status_code == 503 and "no model loaded" in predict.json()["error"]


def test_metrics_count_requests_photos_errors_and_batches_and_name_the_version(model, photos):
    with client(model) as c:
        c.post("/predict", files=photo_files(photos[:2]) + upload(("bad.jpg", b"no")))
        text = c.get("/metrics").text
    version = Classifier.load(model).version
    assert f'dogscats_model{{version="{version}"}} 1.0' in text
    assert (
        'dogscats_photos_total{outcome="ok"} 2.0' in text and 'dogscats_photos_total{outcome="unreadable"} 1.0' in text
    )
    assert 'dogscats_requests_total{route="/predict",status="200"} 1.0' in text
    assert "dogscats_batch_photos_count" in text and "dogscats_request_seconds_bucket" in text


def test_the_page_and_its_files_come_from_the_package_and_fetch_nothing_from_elsewhere(model):
    with client(model) as c:
        page = c.get("/")
        assert c.get("/docs").status_code == 404  # FastAPI's docs would load their script from a CDN
    assert page.status_code == 200 and "/static/app.js" in page.text
    for file in [WEB / "index.html", *(WEB / "static").iterdir()]:
        text = file.read_text()
        assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text, file


def test_batches_gather_concurrent_photos_up_to_the_bound_and_keep_each_photos_row(model, photos):
    classifier = Classifier.load(model)
    images = [classifier.images(path) for path in photos]
    expected = classifier.probabilities(stacked(images))
    sizes = []

    async def run() -> list[np.ndarray]:
        batcher = Batcher(window=0.5, max_batch=3, observe=lambda n, s: sizes.append(n))
        task = asyncio.create_task(batcher.run())
        try:
            return await asyncio.gather(*(batcher.probabilities(classifier, found) for found in images))
        finally:
            task.cancel()

    found = np.array(asyncio.run(run()))
    assert sizes == [3, 2]  # five photos at once: a full batch, then the rest after the window
    np.testing.assert_allclose(found, expected, atol=1e-7, rtol=0)


def test_a_model_that_fails_as_it_runs_fails_its_batch_and_the_batcher_goes_on(model, photos):
    classifier = Classifier.load(model)
    images = [classifier.images(path) for path in photos[:2]]

    class Failing:
        def probabilities(self, batches):
            raise RuntimeError("out of memory")

    async def run() -> tuple[BaseException, np.ndarray]:
        batcher = Batcher(window=0.01, max_batch=4)
        task = asyncio.create_task(batcher.run())
        try:
            failed = await asyncio.gather(batcher.probabilities(Failing(), images[0]), return_exceptions=True)
            return failed[0], await batcher.probabilities(classifier, images[1])
        finally:
            task.cancel()

    failed, p = asyncio.run(run())
    assert isinstance(failed, ModelError) and "RuntimeError: out of memory" in str(failed)
    np.testing.assert_allclose(p, classifier.probabilities([np.stack([side]) for side in images[1]])[0], atol=1e-7)


def test_a_folder_that_fails_to_load_in_any_way_is_refused_and_the_watcher_goes_on(model, monkeypatch):
    watcher = ModelWatcher(model)
    watcher.load()
    monkeypatch.setattr(reload, "checked", lambda folder, threads: (_ for _ in ()).throw(OSError("replaced")))
    watcher.load()  # a file replaced while it was read: not a ModelError
    assert watcher.serving.classifier is not None and "OSError: replaced (still serving:" in watcher.serving.problem


def test_a_new_model_is_swapped_in_and_a_broken_one_refused_while_the_old_keeps_serving(model, photos, tmp_path):
    first = Classifier.load(model).version
    other = write_model(tmp_path / "other", weights={**WEIGHTS, "p_head": (1.0, 1.0, -3.0)})
    with client(model, reload_s=0.05) as c:
        before = c.post("/predict", files=photo_files(photos[:1])).json()
        replace_folder(other, model)
        second = wait_for_version(c, first)
        after = c.post("/predict", files=photo_files(photos[:1])).json()
        (model / "classifier.onnx").write_bytes(b"not a graph")
        problem = wait_for_problem(c)
        still = c.post("/predict", files=photo_files(photos[:1])).json()
        metrics = c.get("/metrics").text
    assert before["version"] == first and after["version"] == second == Classifier.load(other).version
    assert after["photos"][0]["probabilities"] != before["photos"][0]["probabilities"]
    assert "classifier.onnx" in problem and f"still serving: {second}" in problem
    assert still["version"] == second and still["photos"][0]["probabilities"] == after["photos"][0]["probabilities"]
    assert 'dogscats_model_loads_total{result="refused"} 1.0' in metrics


def replace_folder(source: Path, target: Path) -> None:
    """A new export over the model folder, file by file, as dvc checkout writes it."""
    for file in source.iterdir():
        shutil.copy(file, target / (file.name + ".tmp"))
        os.replace(target / (file.name + ".tmp"), target / file.name)


def wait_for_version(c: TestClient, old: str, seconds: float = 20) -> str:
    """The served version once it is not `old`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        version = c.get("/readyz").json()["version"]
        if version != old:
            return version
        time.sleep(0.05)
    raise AssertionError(f"still serving {old} after {seconds} s")


def wait_for_problem(c: TestClient, seconds: float = 20) -> str:
    """/readyz's problem once there is one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = c.get("/readyz").json()
        if body["problem"]:
            assert body["ready"]  # the old model still serves
            return body["problem"]
        time.sleep(0.05)
    raise AssertionError(f"no problem after {seconds} s")


def test_the_fingerprint_moves_with_any_rewrite_of_a_model_file(model):
    before = fingerprint(model)
    (model / "settings.json").write_bytes((model / "settings.json").read_bytes())  # same bytes, a new write
    assert fingerprint(model) != before
    assert fingerprint(model / "missing") == (None, None, None)


# Through uvicorn on 127.0.0.1: what needs a real socket.


@pytest.fixture
def live(model):
    """The server over `model` in uvicorn, in a thread, on a free port of 127.0.0.1: its base URL and port."""
    with background(ServeConfig(model=str(model), max_upload_mb=1)) as url:
        yield url, int(url.rsplit(":", 1)[1])


def rss_mb() -> float:
    """This process's resident memory, in MB (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.parametrize("chunked", [False, True])
def test_a_2_gb_body_is_refused_at_the_limit_and_memory_stays_bounded(live, photos, chunked):
    url, port = live
    before = rss_mb()
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {2 * 1024**3}\r\n")
        + "\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
    sent, chunk = 0, b"a" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode() + (b"%x\r\n%s\r\n" % (len(part), part) if chunked else part))
        try:
            while sent < 2 * 1024**3:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the rest is never read
        reply = s.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert sent < 200 * 1024**2, sent  # refused long before 2 GB
    assert rss_mb() - before < 300
    assert httpx.post(url + "/predict", files=photo_files(photos[:1])).status_code == 200  # it keeps serving


def test_concurrent_requests_are_answered_in_shared_batches(live, photos):
    url, _ = live
    expected, _ = Classifier.load(photos[0].parents[1] / "model").predict(photos)
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = httpx.post(url + "/predict", files=photo_files(photos[i : i + 1]), timeout=30).json()

    threads = [threading.Thread(target=one, args=(i % len(photos),)) for i in range(len(photos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, body in results.items():
        p = [body["photos"][0]["probabilities"][c] for c in body["classes"]]
        np.testing.assert_allclose(p, expected[i], atol=1e-6, rtol=0)
    metrics = httpx.get(url + "/metrics").text
    count = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("dogscats_batch_photos_count"))
    )
    assert 1 <= count <= len(photos)


def test_serve_refuses_a_folder_that_is_not_a_classifier_and_bad_limits_with_status_2(tmp_path, model, capsys):
    assert cli(["serve", str(tmp_path / "nothing")]) == 2
    assert "settings.json not found" in capsys.readouterr().err
    assert cli(["serve", str(model), "--max-files", "0"]) == 2
    assert "max_files must be above 0" in capsys.readouterr().err
    assert cli(["serve", str(model), "--workers", "many"]) == 2
    assert "--workers many" in capsys.readouterr().err
