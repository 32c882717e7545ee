"""The review page in a real headless Chromium (as tests/product/test_page.py: Debian's chromium, nothing downloaded):
decisions by key and by click, undo, a reload that keeps them, and the rows of data/overrides.csv."""

import time
from pathlib import Path

import pytest

from dogscats.data.overrides import read_overrides
from dogscats.product.review import open_project
from dogscats.product.review_api import Review
from dogscats.product.serve_config import ServeConfig
from dogscats.product.server import background

from .test_page import browser  # noqa: F401 (a fixture)
from .test_review import make_project

pytestmark = pytest.mark.slow


def rows_of(project: Path) -> list[tuple[str, str]]:
    return list(read_overrides(project / "data/overrides.csv")[["id", "action"]].itertuples(index=False, name=None))


def wait_for_rows(project: Path, expected: list[tuple[str, str]]) -> None:
    """Wait (at most 10 s) until data/overrides.csv holds the rows expected."""
    deadline = time.monotonic() + 10
    while rows_of(project) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows_of(project) == expected


def status_of(page, id_: str) -> str:
    return page.text_content(f'article.suspect[data-id="{id_}"] .decision')


def test_a_reviewer_decides_by_key_and_by_click_undoes_and_finds_the_decisions_after_a_reload(
    browser,  # noqa: F811
    tmp_path,
):
    project = make_project(tmp_path / "project")
    review = Review(open_project(project), "page-token")
    with background(ServeConfig(model=str(project / "models" / "classifier")), review=review) as url:
        page = browser.new_page()
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{url}/review")
        page.wait_for_selector("article.suspect.current")
        assert page.get_attribute("article.suspect.current", "data-id") == "dog.2"  # the worst label issue first
        page.keyboard.press("r")  # relabel to the suggested class
        wait_for_rows(project, [("dog.2", "relabel:cat")])
        page.wait_for_function("document.querySelector('article.suspect.current').dataset.id === 'cat.3'")
        page.keyboard.press("k")
        wait_for_rows(project, [("dog.2", "relabel:cat"), ("cat.3", "keep")])
        page.keyboard.press("u")  # undo: cat.3 has no decision again
        wait_for_rows(project, [("dog.2", "relabel:cat")])
        page.wait_for_function("document.getElementById('message').textContent === 'undone'")
        assert status_of(page, "cat.3") == "pending"
        page.click('article.suspect[data-id="cat.3"] button:has-text("exclude")')  # the mouse
        page.keyboard.press("ArrowRight")  # the pairs, at once: the key waits for the click's decision
        wait_for_rows(project, [("dog.2", "relabel:cat"), ("cat.3", "exclude")])
        page.wait_for_selector('article.suspect.current[data-kind="conflict"]')
        page.keyboard.press("2")  # the left is a dog; the right, labelled, is kept
        wait_for_rows(
            project, [("dog.2", "relabel:cat"), ("cat.3", "exclude"), ("cat.1", "relabel:dog"), ("dog.1", "keep")]
        )
        page.wait_for_selector('article.suspect.current[data-kind="leak"]')
        page.keyboard.press("d")  # drop the right: a test photo, refused with prepare's reason
        page.wait_for_function("document.getElementById('message').textContent.includes('is a photo to predict')")

        page.reload()
        page.wait_for_selector("article.suspect")
        assert status_of(page, "dog.2") == "reviewed (dog.2: relabel:cat)"
        assert status_of(page, "cat.3") == "reviewed (cat.3: exclude)"
        assert "3 suspect(s) decided since the audit ran" in page.text_content("#next")
        assert page.is_visible("#next") and "dvc repro && dvc metrics diff" in page.text_content("#next")
    assert rows_of(project) == [
        ("dog.2", "relabel:cat"),
        ("cat.3", "exclude"),
        ("cat.1", "relabel:dog"),
        ("dog.1", "keep"),
    ]
    assert requested and all(r.startswith(url) for r in requested), requested  # nothing from elsewhere
