"""`dogscats review`: the suspects and decisions (dogscats.product.review) and their routes on the server's app, through
uvicorn on 127.0.0.1 (the Host, Origin and token checks need the real socket). The page in a real browser is
tests/product/test_review_page.py."""

import threading
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi")
import httpx2 as httpx  # noqa: E402

from dogscats.data.overrides import apply_overrides, read_overrides  # noqa: E402
from dogscats.data.untrusted import DataError  # noqa: E402
from dogscats.product.cli import main as cli  # noqa: E402
from dogscats.product.review import decide, open_project, progress, suspects  # noqa: E402
from dogscats.product.review_api import TOKEN_HEADER, Review  # noqa: E402
from dogscats.product.serve_config import ServeConfig  # noqa: E402
from dogscats.product.server import background  # noqa: E402

from ..conftest import write_image  # noqa: E402

TOKEN = "t0ken-of-this-start"
AUDIT = [  # id, kind, score, other_id, given, suggested, split, fold, other_split, other_fold
    ("dog.2", "label", 0.97, "", "dog", "cat", "train", 2, "", ""),
    ("cat.3", "label", 0.80, "", "cat", "dog", "train", 1, "", ""),
    ("cat.1", "conflict", 1.0, "dog.1", "", "", "train", 1, "train", 2),
    ("cat.4", "leak", 0.99, "1", "", "", "train", 2, "test", 0),
    ("dog.4", "outlier", 0.4, "", "", "", "train", 1, "", ""),
    ("2", "outlier", 0.3, "", "", "", "test", 0, "", ""),
]


def make_project(root: Path) -> Path:
    """A project as the pipeline leaves it for a review: photos, data/split.csv, data/audit.csv, no decisions."""
    rows = []
    for label, colour in (("cat", (200, 60, 40)), ("dog", (40, 60, 200))):
        for n in range(1, 5):
            file = f"data/prepared/train/{label}/{label}.{n}.jpg"
            write_image(root / file, colour, (40 + 5 * n, 32))
            rows.append((f"{label}.{n}", file, label, "train", 1 + n % 2))
    write_image(root / "data/prepared/train/cat/cat%2F7.jpg", (210, 70, 50))  # a class folder's id: cat/7
    rows.append(("cat/7", "data/prepared/train/cat/cat%2F7.jpg", "cat", "train", 1))
    for n in (1, 2):
        write_image(root / f"data/prepared/test/{n}.jpg", (120, 120, 120))
        rows.append((str(n), f"data/prepared/test/{n}.jpg", "", "test", 0))
    pd.DataFrame(rows, columns=["id", "file", "label", "split", "fold"]).to_csv(root / "data/split.csv", index=False)
    columns = ["id", "kind", "score", "other_id", "given", "suggested", "split", "fold", "other_split", "other_fold"]
    audit = pd.DataFrame(AUDIT, columns=columns).assign(exact=False, file="", other_file="", decision="")
    audit.assign(other_decision="", reviewed=False).to_csv(root / "data/audit.csv", index=False)
    (root / "data/overrides.csv").write_text("id,action\n")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def server(project: Path):
    """The review's server on a free port of 127.0.0.1: its base URL."""
    review = Review(open_project(project), TOKEN)
    with background(ServeConfig(model=str(project / "models" / "classifier")), review=review) as url:
        yield url


def post(url: str, decisions: list[tuple[str, str]], **headers) -> httpx.Response:
    body = {"decisions": [{"id": id_, "action": action} for id_, action in decisions]}
    return httpx.post(f"{url}/review/decide", json=body, headers={TOKEN_HEADER: TOKEN, **headers})


def rows_of(project: Path) -> list[tuple[str, str]]:
    return list(read_overrides(project / "data/overrides.csv")[["id", "action"]].itertuples(index=False, name=None))


def test_the_suspects_come_in_the_audits_order_with_their_decisions_and_where_the_review_stands(project):
    (project / "data/overrides.csv").write_text("id,action\ndog.2,keep\ncat.1,relabel:dog\n")
    rows, classes = suspects(open_project(project))
    assert classes == ["cat", "dog"]
    assert [(r["kind"], r["id"], r["other_id"]) for r in rows] == [(k, i, o) for i, k, _, o, *_ in AUDIT]
    assert [r["decisions"] for r in rows] == [["keep"], [""], ["relabel:dog", ""], ["", ""], [""], [""]]
    assert [r["reviewed"] for r in rows] == [True, False, False, False, False, True]  # a test outlier: nothing to do
    found = progress(rows)
    assert found["kinds"]["label"] == {"reviewed": 1, "left": 1} and found["kinds"]["outlier"]["left"] == 1
    assert found["not_run"] == 2 and found["next"] == "dvc repro && dvc metrics diff"  # the audit saw neither


def test_decisions_are_rows_prepare_accepts_and_undo_puts_back_what_was_there(project, server):
    assert post(server, [("dog.2", "relabel:cat")]).json() == {"decided": {"dog.2": "relabel:cat"}}
    assert post(server, [("cat.1", "relabel:dog"), ("dog.1", "keep")]).status_code == 200  # a pair: two rows at once
    assert post(server, [("cat.3", "keep")]).status_code == 200
    assert post(server, [("dog.2", "exclude")]).status_code == 200  # a photo's decision replaced in its row's place
    assert post(server, [("cat.3", "")]).json() == {"decided": {"cat.3": ""}}  # undo: no decision again
    assert rows_of(project) == [("dog.2", "exclude"), ("cat.1", "relabel:dog"), ("dog.1", "keep")]
    images = pd.read_csv(project / "data/split.csv", dtype=str, keep_default_na=False)
    applied, counts = apply_overrides(images, read_overrides(project / "data/overrides.csv"), "data/overrides.csv")
    assert counts == {"n_excluded": 1, "n_relabelled": 1, "n_kept": 1} and "dog.2" not in set(applied.id)
    state = httpx.get(f"{server}/review/state").json()
    assert state["suspects"][0]["decisions"] == ["exclude"] and state["suspects"][2]["reviewed"]


@pytest.mark.parametrize(
    ("decisions", "headers", "status", "reason"),
    [
        ([("dog.2", "keep")], {TOKEN_HEADER: ""}, 403, "needs this page's token"),
        ([("dog.2", "keep")], {TOKEN_HEADER: "guessed"}, 403, "needs this page's token"),
        ([("dog.2", "keep")], {"Origin": "http://evil.example"}, 403, "is not this page's"),
        ([("dog.2", "keep")], {"Host": "evil.example"}, 403, "is not this server's address"),
        ([("dog.2", "keep")], {"Sec-Fetch-Site": "cross-site"}, 403, "a cross-site request"),
        ([("cat.9", "keep")], {}, 422, "no labelled photo has the id 'cat.9'"),
        ([("1", "exclude")], {}, 422, "'1' is a photo to predict"),
        ([("dog.2", "relabel:bird")], {}, 422, "'bird' is not a class (cat, dog)"),
        ([("dog.2", "delete")], {}, 422, "neither exclude, relabel:<class> nor keep"),
        ([("dog.2", "relabel:../../x")], {}, 422, "'../../x' is not a class"),
        ([("cat.1", "exclude"), ("cat.2", "exclude"), ("cat.3", "exclude")], {}, 422, "decisions"),  # at most two
    ],
)
def test_a_hostile_or_wrong_decision_is_refused_in_one_line_and_the_file_is_unchanged(
    project, server, decisions, headers, status, reason
):
    (project / "data/overrides.csv").write_text("id,action\ncat.2,keep\n")
    before = (project / "data/overrides.csv").read_bytes()
    response = post(server, decisions, **headers)
    assert response.status_code == status and reason in response.json()["error"]
    assert "\n" not in response.json()["error"]
    assert (project / "data/overrides.csv").read_bytes() == before


def test_a_decision_that_would_leave_a_class_without_photos_or_meets_a_broken_file_is_refused(project):
    reviewed = open_project(project)
    decide(reviewed, [("cat.1", "exclude"), ("cat.2", "relabel:dog")])
    decide(reviewed, [("cat.3", "exclude"), ("cat/7", "exclude")])
    with pytest.raises(DataError, match="decision cat.4: no labelled photo of class cat would be left"):
        decide(reviewed, [("cat.4", "relabel:dog")])
    (project / "data/overrides.csv").write_text("id,action\ndog.1,keep\ndog.1,exclude\n")  # edited by hand
    with pytest.raises(DataError, match=r"overrides.csv, line 3: 'dog.1' is overridden twice"):
        decide(reviewed, [("dog.2", "keep")])
    assert (project / "data/overrides.csv").read_text() == "id,action\ndog.1,keep\ndog.1,exclude\n"


def test_an_excluded_photo_can_be_decided_again_and_a_hand_written_column_is_kept(project):
    (project / "data/overrides.csv").write_text("id,action,note\ncat.1,exclude,blurry\n")
    split = pd.read_csv(project / "data/split.csv", dtype=str, keep_default_na=False)
    split[split.id != "cat.1"].to_csv(project / "data/split.csv", index=False)  # as prepare leaves it
    decide(open_project(project), [("cat.1", "keep")])  # the exclusion undone by a reviewer, before prepare reruns
    decide(open_project(project), [("dog.3", "exclude")])  # and the file stays valid for the next decision
    table = pd.read_csv(project / "data/overrides.csv", dtype=str, keep_default_na=False)
    assert table.to_dict("records") == [
        {"id": "cat.1", "action": "keep", "note": "blurry"},  # the row changed in its place, the user's note kept
        {"id": "dog.3", "action": "exclude", "note": ""},
    ]


def test_two_pages_deciding_at_once_lose_nothing(project, server):
    ids = [f"{label}.{n}" for label in ("cat", "dog") for n in range(1, 5)]
    failures = []

    def page(mine: list[str]) -> None:
        for id_ in mine:
            for action in ("keep", "exclude", "keep"):  # each photo changed three times, the pages interleaved
                response = post(server, [(id_, action)])
                if response.status_code != 200:
                    failures.append(response.text)

    pages = [threading.Thread(target=page, args=(ids[i::2],)) for i in range(2)]
    for thread in pages:
        thread.start()
    for thread in pages:
        thread.join()
    assert failures == []
    assert sorted(rows_of(project)) == sorted((id_, "keep") for id_ in ids)


def test_photos_are_served_by_id_from_the_split_only(project, server):
    response = httpx.get(f"{server}/review/photo/cat.1")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8"
    (project / "secret.jpg").write_bytes((project / "data/prepared/test/1.jpg").read_bytes())
    for path in ("secret", "..%2Fsecret.jpg", "..%2F..%2Fsecret.jpg", "%2E%2E%2Fsecret", "cat.1%2F..%2F..%2Fsplit.csv"):
        response = httpx.get(f"{server}/review/photo/{path}")
        assert response.status_code == 404, path
    slashed = httpx.get(f"{server}/review/photo/cat%2F7")  # an id with a /, as the page encodes it
    assert slashed.status_code == 200 and slashed.content[:2] == b"\xff\xd8"
    refused = httpx.get(f"{server}/review/photo/cat.1", headers={"Host": "attacker.example:80"})
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/json"
    page = httpx.get(f"{server}/review")
    assert page.status_code == 200 and f'content="{TOKEN}"' in page.text  # this start's token, for its page only
    assert page.headers["x-frame-options"] == "DENY"  # never inside another site's frame
    assert httpx.get(f"{server}/review", headers={"Host": "rebound.example:8001"}).status_code == 403


def test_a_label_issues_map_comes_from_the_projects_classifier(project):
    from .test_explain import export_tiny

    with background(
        ServeConfig(model=str(project / "models" / "classifier")), review=Review(open_project(project), TOKEN)
    ) as url:
        assert httpx.get(f"{url}/review/map/dog.2?target=cat").status_code == 404  # no classifier yet: no maps
    export_tiny(project / "models" / "classifier", ["cat", "dog"])
    with background(
        ServeConfig(model=str(project / "models" / "classifier")), review=Review(open_project(project), TOKEN)
    ) as url:
        response = httpx.get(f"{url}/review/map/dog.2?target=cat")
        assert response.status_code == 200 and response.content[:2] == b"\xff\xd8"
        assert httpx.get(f"{url}/review/map/dog.2?target=bird").status_code == 422
        assert httpx.get(f"{url}/review/map/nobody?target=cat").status_code == 404


def test_the_command_names_the_missing_audit_and_what_makes_it(project, capsys):
    (project / "data/audit.csv").unlink()
    assert cli(["review", str(project)]) == 2
    error = capsys.readouterr().err
    assert "audit.csv: not found; run `dvc repro audit`" in error and error.count("\n") == 1


@pytest.mark.parametrize("path", ["/review/state", "/review/photo/cat.1", "/predict", "/readyz", "/metrics", "/"])
@pytest.mark.parametrize(
    "headers", [{"Origin": "http://evil.example"}, {"Host": "evil.example"}, {"Sec-Fetch-Site": "same-site"}]
)
def test_nothing_the_review_server_holds_is_read_from_another_site(server, path, headers):
    response = httpx.get(f"{server}{path}", headers=headers)
    assert response.status_code == 403 and response.json()["error"]


def test_a_keep_leaves_a_relabel_as_it_is_the_label_the_page_shows(project):
    reviewed = open_project(project)
    decide(reviewed, [("cat.1", "relabel:dog")])
    assert decide(reviewed, [("cat.1", "keep"), ("dog.1", "keep")]) == {"cat.1": "relabel:dog", "dog.1": "keep"}
    decide(reviewed, [("cat.1", "")])  # undo to nothing still removes it
    assert rows_of(project) == [("dog.1", "keep")]
