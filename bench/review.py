"""Measure the review loop on real photos: plant label flips, run the pipeline, review the audit's top label suspects
in `dogscats review` in headless Chromium as a reviewer would, rebuild, and score.

    python bench/review.py --data ../shared/data/catsdogs [--work /tmp/dogscats-review] [--screenshot docs/review.png]

1. Two photo sets as folders of symlinks (bench/audit.py's): the sample as it is (clean), and the flips set (40 labelled
   photos, seeded, under the other class's name). Each in a fresh DVC project (bench/scale.py's), default params:
   `dvc repro`.
2. The flips project's review: `dogscats review`'s app on 127.0.0.1, driven in headless Chromium (Debian's chromium).
   For each of the top 60 label suspects, in the page's order, the reviewer presses `r` (the suggested class) when the
   suspect is a flip and `k` (keep) otherwise: the script knows the flips, the page does not. Counts the keystrokes
   and the review's wall time.
3. `dvc repro` on the flips project; then the page's state: how many of the reviewed suspects are pending (none is
   expected); a second `dvc repro` must run nothing.
4. Prints the out-of-fold log loss over the photos never flipped: clean, flipped, and after the review.
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import httpx2 as httpx
from audit import build_flips, cpu, link_all, oof_log_loss
from playwright.sync_api import sync_playwright
from scale import REPO, project_at, run

from dogscats.data.dataset import read_manifest
from dogscats.product.review import open_project
from dogscats.product.review_api import Review
from dogscats.product.serve_config import ServeConfig
from dogscats.product.server import background

TOP = 60
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def repro(project: Path) -> tuple[float, list[str]]:
    """`dvc repro` in the project: its wall seconds and the stages it ran."""
    seconds, _, output = run(project, "dvc", "repro")
    return seconds, [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def review(project: Path, flipped: set[str], screenshot: Path | None) -> tuple[list[str], int, float]:
    """Drive the page over the top TOP label suspects: the ids reviewed, the keys pressed and the wall seconds."""
    reviewed, keys = [], 0
    config = ServeConfig(model=str(project / "models" / "classifier"))
    with background(config, review=Review(open_project(project), "bench")) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        start = time.perf_counter()
        page.goto(f"{url}/review")
        page.wait_for_selector("article.suspect.current")
        if screenshot:
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(screenshot))
        while len(reviewed) < TOP:
            current = page.query_selector("article.suspect.current")
            id_ = current.get_attribute("data-id")
            if current.get_attribute("data-kind") != "label" or "reviewed" in current.get_attribute("class"):
                break  # every label suspect decided
            page.keyboard.press("r" if id_ in flipped else "k")
            keys += 1
            page.wait_for_selector(f'article.suspect.reviewed[data-id="{id_}"]')
            reviewed.append(id_)
        seconds = time.perf_counter() - start
        browser.close()
    return reviewed, keys, seconds


def pending_after(project: Path, reviewed: list[str]) -> tuple[int, int]:
    """After a rebuild: how many of the reviewed photos' findings the page shows pending, and of how many shown."""
    config = ServeConfig(model=str(project / "models" / "classifier"))
    with background(config, review=Review(open_project(project), "bench")) as url:
        rows = httpx.get(f"{url}/review/state").json()["suspects"]
    theirs = [row for row in rows if row["id"] in set(reviewed) or row["other_id"] in set(reviewed)]
    return sum(not row["reviewed"] for row in theirs), len(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "catsdogs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dogscats-review"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screenshot", type=Path, help="a screenshot of the page as the review starts (a PNG)")
    args = parser.parse_args()
    data, work = args.data.resolve(), args.work.absolute()
    print(f"machine: {cpu()}", flush=True)
    flipped, sources = build_flips(data, work / "raw-flips", args.seed)
    link_all(data, work / "raw-clean")
    clean = project_at(work / "clean", work / "raw-clean")
    flips = project_at(work / "flips", work / "raw-flips")
    for project in (clean, flips):
        seconds, ran = repro(project)
        print(f"{project.parent.name}: dvc repro {seconds:.0f} s ({len(ran)} stages)", flush=True)
    flipped_loss = {}
    never = set(read_manifest(clean / "data" / "split.csv").query("split == 'train'").id) - set(sources)
    flipped_loss["clean"] = oof_log_loss(clean, never)
    flipped_loss["flipped"] = oof_log_loss(flips, never)

    reviewed, keys, seconds = review(flips, set(flipped), args.screenshot)
    found = sorted(set(reviewed) & set(flipped))
    print(f"review: {len(reviewed)} label suspects in {seconds:.1f} s, {keys} keys; {len(found)} of {len(flipped)} "
          f"flips among them, relabelled to their class")  # fmt: skip
    rows = (flips / "data" / "overrides.csv").read_text().splitlines()
    print(f"data/overrides.csv: {len(rows) - 1} rows ({sum('relabel' in r for r in rows)} relabel, "
          f"{sum(r.endswith(',keep') for r in rows)} keep)")  # fmt: skip
    seconds, ran = repro(flips)
    print(f"after the review: dvc repro {seconds:.0f} s, ran {ran}", flush=True)
    flipped_loss["after review"] = oof_log_loss(flips, never)
    pending, shown = pending_after(flips, reviewed)
    print(f"after the rebuild: {pending} of the {shown} findings of reviewed photos pending on the page")
    _, again = repro(flips)
    print(f"a second dvc repro ran: {again or 'nothing'}")
    for name, (loss, n) in flipped_loss.items():
        print(f"  {name}: out-of-fold log loss {loss:.5f} over the {n} labelled photos never flipped")
    print(json.dumps({name: round(loss, 5) for name, (loss, _) in flipped_loss.items()}))


if __name__ == "__main__":
    main()
