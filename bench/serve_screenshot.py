"""docs/serve.png: the upload page after an upload, in headless Chromium (Debian's `chromium`, by its path).

    python bench/serve_screenshot.py --model models/classifier --out docs/serve.png PHOTO...

The server runs in this process on a free port of 127.0.0.1; the photos are chosen in the page's file input as a user
would, and the page is captured once every card is drawn."""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from dogscats.product.serve_config import ServeConfig
from dogscats.product.server import background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, default=Path("models/classifier"))
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    with background(ServeConfig(model=str(args.model))) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model ')")
        page.set_input_files("#files", [str(p) for p in args.photos])
        page.wait_for_selector(f"article.photo >> nth={len(args.photos) - 1}")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
