"""The upload page in a real headless Chromium (Debian's `chromium`, driven by Playwright with the browser's path given:
nothing is downloaded). Skipped where no Chromium is installed, unless DOGSCATS_REQUIRE_BROWSER is set (.ci/run sets
it: there the test must run)."""

import os
import shutil

import pytest

from dogscats.product.classifier import Classifier
from dogscats.product.serve_config import ServeConfig
from dogscats.product.server import background

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    """A headless Chromium, launched from its path."""
    if not CHROMIUM:
        if os.environ.get("DOGSCATS_REQUIRE_BROWSER"):
            pytest.fail("no chromium found: install Debian's chromium package, or set CHROMIUM to its path")
        pytest.skip("no chromium installed (apt install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_the_page_shows_each_uploaded_photos_class_and_probabilities_and_the_broken_files_reason(
    browser, model, photos, tmp_path
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo at all")
    expected, _ = Classifier.load(model).predict(photos[:2])
    classes = Classifier.load(model).classes
    with background(ServeConfig(model=str(model))) as url:
        page = browser.new_page()
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model ')")
        page.set_input_files("#files", [str(photos[0]), str(photos[1]), str(broken)])
        page.wait_for_selector("article.photo >> nth=2")
        cards = page.query_selector_all("article.photo")
        assert [card.get_attribute("data-name") for card in cards] == [photos[0].name, photos[1].name, broken.name]
        for card, p in zip(cards[:2], expected, strict=True):
            assert card.query_selector(".class").text_content() == classes[int(p[1] >= 0.5)]
            shown = {
                bar.get_attribute("data-class"): bar.query_selector(".p").text_content()
                for bar in card.query_selector_all(".bar")
            }
            assert shown == {c: f"{v:.4f}" for c, v in zip(classes, p, strict=True)}
            assert "no class activation maps" in card.query_selector(".reason").text_content()  # this graph has none
        assert "error" in cards[2].get_attribute("class") and cards[2].query_selector(".bar") is None
        assert "cannot identify image file" in cards[2].query_selector(".reason").text_content()
        assert "3 photo(s), 1 unreadable" in page.text_content("#status")
        if os.environ.get("DOGSCATS_SCREENSHOT"):
            page.screenshot(path=os.environ["DOGSCATS_SCREENSHOT"], full_page=True)
    assert requested and all(r.startswith(url) for r in requested), requested  # nothing from elsewhere


def test_a_name_is_shown_as_text_never_run_as_html(browser, model, photos, tmp_path):
    hostile = tmp_path / "<img src=x onerror=document.title='pwned'>.jpg"
    hostile.write_bytes(photos[0].read_bytes())
    with background(ServeConfig(model=str(model))) as url:
        page = browser.new_page()
        page.goto(url)
        page.set_input_files("#files", [str(hostile)])
        page.wait_for_selector("article.photo")
        assert page.query_selector("article.photo .name").text_content() == hostile.name
        assert page.title() == "dogscats" and page.query_selector("article.photo img") is None
