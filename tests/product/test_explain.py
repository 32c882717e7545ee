"""Class activation maps (dogscats.product.explain): a tiny classifier exported from a random small CNN and a random GAP
-> Dense head (as stages/export.py writes it), whose maps' spatial means must be the head's logits; the feature-map
outputs must leave the probabilities unchanged; classify --explain writes one overlay per readable photo. Slow: the
real Lite weights in the exported project of tests/product/test_classifier.py."""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from PIL import Image

from dogscats.base.atomic import write_json
from dogscats.data.classifier_files import CAM_FILE, OUTPUTS
from dogscats.engine.conversion import to_onnx as engine_to_onnx
from dogscats.models.evaluation import worst_mistakes_html
from dogscats.models.export import cam_settings, canonical_onnx, classifier_graph, to_onnx
from dogscats.models.head import build_head
from dogscats.networks.determinism import set_seed
from dogscats.product.classifier import Classifier, ModelError
from dogscats.product.cli import main as cli
from dogscats.product.explain import explain, overlay, overlay_data_uris, page_overlays

SIZE = 96  # small_cnn: a 4 x 4 feature map
PREPROCESSING = {"weights": None, "pooling": "avg", "tta": True, "crops": 1, "resize": "crop", "decode": "full"}


def export_tiny(folder: Path, classes: list[str]) -> keras.Model:
    """A classifier folder as the export stage writes it, small_cnn (random) at SIZE with the flip TTA and a random
    head with a bias; returns its Keras graph."""
    set_seed(0)
    head = build_head(128, len(classes), 0, 0.5, "adam", 1e-3)  # small_cnn's 128 channels
    dense = head.get_layer("p")
    rng = np.random.default_rng(1)
    dense.set_weights([rng.normal(0, 5, dense.kernel.shape), rng.normal(0, 1, dense.bias.shape)])
    graph = classifier_graph({"small_cnn": SIZE}, PREPROCESSING, head)
    folder.mkdir(parents=True)
    (folder / "classifier.onnx").write_bytes(to_onnx(graph))
    settings = {"classes": classes, "sizes": {"small_cnn": SIZE}, "resize": "crop", "decode": "full", "blend": 0}
    settings |= {"temperature": 1.0, "clip_low": 0.0, "clip_high": 1.0, "head_epoch": 1, "epoch": 0}
    write_json(folder / "settings.json", settings)
    write_json(folder / CAM_FILE, cam_settings(head, {"small_cnn": SIZE}, PREPROCESSING))
    return graph


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, keras.Model, list[Path]]:
    """The two-class tiny classifier's folder, its Keras graph, and four photos of different shapes and colours."""
    root = tmp_path_factory.mktemp("explain")
    graph = export_tiny(root / "model", ["cat", "dog"])
    photos = []
    colours = [(200, 40, 40), (20, 20, 20), (40, 90, 250), (230, 230, 230)]
    for i, ((w, h), colour) in enumerate(zip([(90, 60), (64, 64), (50, 80), (70, 70)], colours, strict=True)):
        path = root / "photos" / f"p{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        pixels = np.full((h, w, 3), colour, np.uint8)
        pixels[: h // 2, : w // 2] = 255 - pixels[: h // 2, : w // 2]  # a block in one corner: a map that varies
        Image.fromarray(pixels).save(path)
        photos.append(path)
    return root / "model", graph, photos


def logits(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of sigmoid probabilities."""
    p = p.astype(np.float64)
    return np.log(p / (1 - p))


def test_the_cams_spatial_mean_is_the_heads_logit(tiny):
    folder, graph, photos = tiny
    model = Classifier.load(folder)
    p_head = graph.predict(np.stack([model.images(path)[0] for path in photos]), verbose=0)[0][:, 0]
    z = logits(p_head)
    for target, sign in ((1, 1), (0, -1)):  # the second class's map is the logit's, the first's minus it
        maps = explain(model, photos, [target] * len(photos))
        means = np.array([e.cam.mean() for e in maps])
        np.testing.assert_allclose(means, sign * z, rtol=1e-4, atol=1e-4)
    assert np.ptp(z) > 0.2 and maps[0].cam.shape == (4, 4) and np.ptp(maps[0].cam) > 0  # photos differ; a map varies
    by_head = explain(model, photos)  # the head's own class: that of its logit's sign
    assert [e.target for e in by_head] == [int(v >= 0) for v in z]
    mixed = explain(model, photos, [None, 1 - by_head[1].target, None, 0])  # None: the head's own class
    assert [e.target for e in mixed] == [by_head[0].target, 1 - by_head[1].target, by_head[2].target, 0]


def test_a_softmax_heads_maps_differ_by_the_log_ratios_of_its_probabilities(tmp_path, tiny):
    graph = export_tiny(tmp_path / "model", ["bird", "cat", "dog"])
    photos = tiny[2]
    model = Classifier.load(tmp_path / "model")
    p_head = graph.predict(np.stack([model.images(path)[0] for path in photos]), verbose=0)[0].astype(np.float64)
    means = np.array([[e.cam.mean() for e in explain(model, photos, [c] * len(photos))] for c in range(3)]).T
    np.testing.assert_allclose(means - means[:, :1], np.log(p_head / p_head[:, :1]), atol=1e-4)
    assert [e.target for e in explain(model, photos)] == p_head.argmax(1).tolist()


def test_the_feature_map_outputs_leave_the_probabilities_unchanged(tiny):
    folder, graph, photos = tiny
    with_maps = ort.InferenceSession(str(folder / "classifier.onnx"), providers=["CPUExecutionProvider"])
    without = ort.InferenceSession(canonical_onnx(engine_to_onnx(graph), OUTPUTS), providers=["CPUExecutionProvider"])
    assert [x.name for x in with_maps.get_outputs()] == ["p_head", "p_finetuned", "feature_map_small_cnn"]
    images = np.stack([Classifier.load(folder).images(path)[0] for path in photos])
    got, expected = (
        with_maps.run(list(OUTPUTS), {"image_small_cnn": images}),
        without.run(None, {"image_small_cnn": images}),
    )
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    (maps,) = with_maps.run(["feature_map_small_cnn"], {"image_small_cnn": images})
    assert maps.shape == (2 * len(photos), 4, 4, 128)  # the photos, then their mirror images; NHWC


def test_overlay_has_the_photos_size_and_shows_the_hot_spot_in_red():
    photo = Image.new("RGB", (90, 60), (128, 128, 128))
    cam = np.zeros((4, 4))
    cam[0, 3] = 5.0  # hot at the top right
    image = overlay(photo, cam)
    assert image.size == (90, 60) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert pixels[2, 87, 0] > pixels[2, 87, 2] and pixels[57, 2, 2] > pixels[57, 2, 0]  # red hot, blue cold
    assert overlay(np.zeros((8, 8, 3), np.uint8), np.ones((2, 2))).size == (8, 8)  # a flat map draws, no NaN


def test_classify_explain_writes_one_overlay_per_readable_photo(tiny, tmp_path, capsys):
    folder, _, photos = tiny
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = tmp_path / "cams"
    status = cli(["classify", *map(str, photos), str(bad), "--model", str(folder), "--explain", str(out)])
    assert status == 1  # the bad file's row has an error; the others are explained
    assert sorted(p.name for p in out.iterdir()) == [f"p{i}.cam.png" for i in range(4)]
    assert all(Image.open(out / f"p{i}.cam.png").size == (SIZE, SIZE) for i in range(4))  # as the network saw them
    assert capsys.readouterr().out.count("\n") == 6  # the CSV as without --explain: header and five rows
    uris = overlay_data_uris(Classifier.load(folder), [photos[0], bad])
    assert uris[0].startswith("data:image/jpeg;base64,") and uris[1] == ""


def test_the_servers_maps_are_the_overlays_of_the_class_it_answers(tiny):
    server = pytest.importorskip("dogscats.product.server")
    from fastapi.testclient import TestClient

    from dogscats.product.serve_config import ServeConfig

    folder, _, photos = tiny
    files = [("files", (p.name, p.read_bytes())) for p in photos] + [("files", ("bad.jpg", b"no"))]
    with TestClient(server.create_app(ServeConfig(model=str(folder)))) as client:
        rows = client.post("/predict?maps=true", files=files).json()["photos"]
    classifier = Classifier.load(folder)
    targets = [classifier.classes.index(row["class"]) for row in rows[:4]]
    assert [row["map"] for row in rows[:4]] == overlay_data_uris(classifier, photos, targets, side=320)
    assert "map" not in rows[4] and rows[4]["error"]


def test_a_classifier_without_maps_refuses_explain_in_one_line(tiny, tmp_path, capsys):
    folder, _, photos = tiny
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("classifier.onnx", "settings.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ModelError, match="cam.json not found"):
        explain(Classifier.load(copy), photos)
    assert cli(["classify", str(photos[0]), "--model", str(copy), "--explain", str(tmp_path / "cams")]) == 2
    assert "cam.json not found" in capsys.readouterr().err and not (tmp_path / "cams").exists()


def test_cam_settings_are_empty_for_a_hidden_layer_or_max_pooling():
    head = build_head(8, 2, 4, 0.5, "adam", 1e-3)
    assert cam_settings(head, {"small_cnn": SIZE}, PREPROCESSING) == {}
    linear = build_head(8, 2, 0, 0.5, "adam", 1e-3)
    assert cam_settings(linear, {"small_cnn": SIZE}, {**PREPROCESSING, "pooling": "max"}) == {}
    assert json.dumps(cam_settings(linear, {"small_cnn": SIZE}, PREPROCESSING))  # JSON as it is


def test_the_worst_mistakes_page_shows_each_mistakes_cam_beside_its_photo(tiny, tmp_path, capsys):
    folder, _, photos = tiny
    rows = pd.DataFrame(
        {"id": ["p0", "p2"], "file": [str(photos[0]), str(photos[2])], "truth": ["cat", "dog"], "p_truth": [0.1, 0.2]}
    ).assign(loss=[2.3, 1.6])
    overlays = page_overlays(str(folder), rows.file.tolist(), [1, 0], "evaluate")
    page = worst_mistakes_html(rows, "worst", overlays)
    assert page.count('<img class="cam" src="data:image/jpeg;base64,') == 2 and "class activation map" in page
    assert page.count('<img src="data:image/jpeg;base64,') == 2  # the photos, as before
    assert page_overlays(str(tmp_path / "none"), rows.file.tolist(), [1, 0], "evaluate") is None
    assert "no class activation maps" in capsys.readouterr().err
    assert 'class="cam"' not in worst_mistakes_html(rows, "worst")


def test_explain_names_each_overlay_by_its_path_under_the_folder_given_and_refuses_a_clash(tiny, tmp_path, capsys):
    """Finding 5: photos/a/x.jpg, photos/a/x_2.jpg and photos/b/x.jpg gave two files, x_2.cam.png b/x.jpg's map."""
    folder, _, photos = tiny
    tree = tmp_path / "photos"
    for source, target in ((photos[0], "a/x.jpg"), (photos[2], "a/x_2.jpg"), (photos[3], "b/x.jpg")):
        (tree / target).parent.mkdir(parents=True, exist_ok=True)
        (tree / target).write_bytes(source.read_bytes())
    out = tmp_path / "cams"
    assert cli(["classify", str(tree), "--model", str(folder), "--explain", str(out)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a/x.cam.png", "a/x_2.cam.png", "b/x.cam.png"]
    model = Classifier.load(folder)
    for name in ("a/x", "a/x_2", "b/x"):  # each file its own photo's map
        (expected,) = explain(model, [tree / f"{name}.jpg"])
        drawn = np.asarray(Image.open(out / f"{name}.cam.png"), dtype=float)
        assert np.abs(drawn - np.asarray(overlay(expected.image, expected.cam), dtype=float)).mean() < 1
    two = tmp_path / "two"  # several folders: each mirrored under its own name, so two cameras' x.jpg stay apart
    assert cli(["classify", str(tree / "a"), str(tree / "b"), "--model", str(folder), "--explain", str(two)]) == 0
    assert sorted(str(p.relative_to(two)) for p in two.rglob("*.png")) == written  # a/ and b/, as the folders
    capsys.readouterr()
    clash = tmp_path / "clash"
    files = [str(tree / "a" / "x.jpg"), str(tree / "b" / "x.jpg")]  # two files given by name
    status = cli(["classify", *files, "--model", str(folder), "--explain", str(clash)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "would both write x.cam.png" in err and not clash.exists()


def test_maps_are_computed_a_batch_at_a_time_however_many_photos_a_page_asks_for(tiny, monkeypatch):
    """Finding 6: the evaluate and audit pages ran every photo's map through the network at once."""
    folder, _, photos = tiny
    model = Classifier.load(folder)
    sizes = []

    class Counting:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            sizes.append(len(next(iter(feeds.values()))))
            return self.session.run(names, feeds)

        def __getattr__(self, name):
            return getattr(self.session, name)

    counted = dataclasses.replace(model, session=Counting(model.session))
    uris = overlay_data_uris(counted, photos * 10, batch_size=16)
    assert len(uris) == 40 and all(uris) and sizes == [16, 16, 8]
    assert uris[0] == uris[4] == overlay_data_uris(model, photos[:1])[0]  # batching changes no map
