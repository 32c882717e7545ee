"""A bounded load test of `dogscats serve` on 127.0.0.1, beside `dogscats classify` on the same photos in the same run.

    python bench/serve.py --photos ../shared/data/catsdogs/test --model models/classifier \
        --clients 8 --requests 2000 [--second-model DIR] [--parity]

The server runs in a process of its own (`python -m dogscats.product.cli serve`, on a copy of the model folder in a
temporary folder, on a free port of 127.0.0.1); C client threads send N requests in all, one photo each, cycling through
the photos, then stop (also after --max-seconds). It prints photos/s, p50/p95/p99 latency and errors, and the ratio to
`dogscats classify` over the same N photos (one process, the photos repeated as the load sends them).

--second-model DIR: the reload check. A third of the way through, the served folder is replaced by DIR's files (a
second export); two thirds through, by a broken one (classifier.onnx not a graph). Every response must name a version
that was served and carry that version's probabilities (Classifier.predict's, within 1e-6); at the end the second
version still serves and /readyz says why the broken one was refused.

--parity: every photo through the server (16 a request) against Classifier.predict, the largest difference printed
(acceptance: at most 1e-6)."""

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

from dogscats.engine.quantize import cpu_flags
from dogscats.product.classifier import Classifier, image_files


def machine() -> str:
    """The processor's model (lscpu) and its vector and int8 flags (quantize.cpu_flags)."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores, {' '.join(cpu_flags())} ({platform.python_version()})"


def free_port() -> int:
    """A free TCP port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    """`dogscats serve` on the model folder, in its own process, waited for until /readyz answers 200."""
    command = [sys.executable, "-m", "dogscats.product.cli", "serve", str(model), "--port", str(port)]
    process = subprocess.Popen(command + ["--workers", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready in 120 s")


def replace_files(source: Path, target: Path) -> None:
    """source's files over target's, each written beside and renamed (as DVC writes an output)."""
    for file in sorted(source.iterdir()):
        if file.is_file():
            shutil.copy(file, target / f".{file.name}.tmp")
            os.replace(target / f".{file.name}.tmp", target / file.name)


def load(url: str, photos: list[Path], clients: int, requests: int, max_seconds: float, events=()) -> dict:
    """C clients send `requests` one-photo requests in all (photo i % len(photos)); stops at the count or the time.
    events: (fraction of the requests, function) run once that many requests were sent. Returns the answers and
    latencies."""
    data = [p.read_bytes() for p in photos]
    lock, counter = threading.Lock(), iter(range(requests))
    answers: list[tuple[int, int, dict | str, float]] = []  # (request, status, body, seconds)
    pending = sorted(events, key=lambda e: e[0])
    stop = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            while time.monotonic() < stop:
                with lock:
                    i = next(counter, None)
                    while pending and i is not None and i >= pending[0][0] * requests:
                        pending.pop(0)[1]()
                if i is None:
                    return
                photo = i % len(photos)
                start = time.perf_counter()
                try:
                    r = session.post(url + "/predict", files=[("files", (photos[photo].name, data[photo]))])
                    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                    status = r.status_code
                except httpx.HTTPError as err:
                    body, status = f"{type(err).__name__}: {err}", 0
                with lock:
                    answers.append((i, status, body, time.perf_counter() - start))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"answers": answers, "seconds": time.perf_counter() - began}


def classify_rate(model: Path, photos: list[Path], n: int, scratch: Path) -> tuple[float, float]:
    """`dogscats classify` over n photos (the list repeated as the load sends them), in one process: photos/s, s."""
    files = []
    for i in range(n):
        link = scratch / "classify" / f"{i:05d}{photos[i % len(photos)].suffix}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(photos[i % len(photos)].resolve())
        files.append(link)
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "dogscats.product.cli",
        "classify",
        "--model",
        str(model),
        str(scratch / "classify"),
    ]
    subprocess.run(command + ["--out", str(scratch / "classify.csv")], check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return n / seconds, seconds


def parity(url: str, model: Path, photos: list[Path]) -> float:
    """The largest difference between the server's probabilities and Classifier.predict's over the photos."""
    expected, errors = Classifier.load(model).predict(photos)
    served = []
    with httpx.Client(timeout=120) as session:
        for start in range(0, len(photos), 16):
            batch = photos[start : start + 16]
            body = session.post(url + "/predict", files=[("files", (p.name, p.read_bytes())) for p in batch]).json()
            served += [
                [row["probabilities"][c] for c in body["classes"]]
                if row["probabilities"]
                else [np.nan] * len(body["classes"])
                for row in body["photos"]
            ]
    served = np.array(served)
    ok = ~np.isnan(expected).any(axis=1)
    assert (np.isnan(served).any(axis=1) == ~ok).all(), "the server and the classifier disagree on unreadable photos"
    return float(np.abs(served[ok] - expected[ok]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos (searched recursively)")
    parser.add_argument("--model", type=Path, default=Path("models/classifier"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="0: no load (with --parity, the parity alone)")
    parser.add_argument("--max-seconds", type=float, default=600, help="the load stops after this, whatever is left")
    parser.add_argument("--second-model", type=Path, help="reload check: a second export swapped in, then a broken one")
    parser.add_argument("--parity", action="store_true", help="every photo's probabilities against Classifier.predict")
    args = parser.parse_args()
    photos = [p for p in image_files([args.photos]) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    print(f"machine: {machine()}")
    print(f"photos: {len(photos)} from {args.photos}; model {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        served = scratch / "model"
        shutil.copytree(args.model, served)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(served, port, scratch / "server.log")
        try:
            if args.parity:
                worst = parity(url, args.model, photos)
                print(f"parity: largest |server - Classifier.predict| over {len(photos)} photos = {worst:.3g}")
            expected, events = {}, []
            if args.second_model:  # each answer checked against its version's Classifier.predict
                first = Classifier.load(args.model)
                expected[first.version] = first.predict(photos)[0]
                second = Classifier.load(args.second_model)
                expected[second.version] = second.predict(photos)[0]
                broken = scratch / "broken"
                broken.mkdir()
                (broken / "classifier.onnx").write_bytes(b"not an ONNX graph")
                events = [
                    (1 / 3, lambda: replace_files(args.second_model, served)),
                    (2 / 3, lambda: replace_files(broken, served)),
                ]
            if not args.requests:
                return
            result = load(url, photos, args.clients, args.requests, args.max_seconds, events)
            ready = httpx.get(url + "/readyz").json()
        finally:
            server.terminate()
            server.wait(30)
        report(result, photos, expected, ready, args)
        if args.second_model:  # the reload check: the ratio is measured without reloads
            return
        rate, seconds = classify_rate(args.model, photos, len(result["answers"]), scratch)
        served_rate = len(result["answers"]) / result["seconds"]
        print(f"dogscats classify: {len(result['answers'])} photos in {seconds:.1f} s = {rate:.1f} photos/s")
        print(f"ratio server / classify: {served_rate / rate:.2f}")


def report(result: dict, photos: list[Path], expected: dict, ready: dict, args: argparse.Namespace) -> None:
    """Throughput, latency percentiles, errors, and (with a second model) each answer checked against its version."""
    answers = result["answers"]
    failed = [(i, status, body) for i, status, body, _ in answers if status != 200 or body["photos"][0]["error"]]
    latencies = np.array([s for _, _, _, s in answers]) * 1000
    n, seconds = len(answers), result["seconds"]
    print(f"load: {args.clients} clients, {n} one-photo requests in {seconds:.1f} s = {n / seconds:.1f} photos/s")
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    print(f"latency ms: p50 {p50:.0f}, p95 {p95:.0f}, p99 {p99:.0f}, mean {statistics.fmean(latencies):.0f}")
    print(f"errors: {len(failed)}" + (f"; first: {failed[0]}" if failed else ""))
    versions: dict[str, int] = {}
    worst = 0.0
    for i, status, body, _ in answers:
        if status != 200:
            continue
        version = body["version"]
        versions[version] = versions.get(version, 0) + 1
        if not expected:
            continue
        if version not in expected:
            print(f"request {i}: version {version} was never served")
            continue
        row = body["photos"][0]
        p = np.array([row["probabilities"][c] for c in body["classes"]])
        worst = max(worst, float(np.abs(p - expected[version][i % len(photos)]).max()))
    print(f"versions answered: {versions}")
    if expected:
        print(f"largest |p - the answering version's Classifier.predict| = {worst:.3g}")
    if args.second_model:
        print(
            f"/readyz at the end: ready {ready['ready']}, version {ready.get('version')}, problem: {ready['problem']}"
        )


if __name__ == "__main__":
    main()
