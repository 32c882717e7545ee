"""Measure the audit stage on real photos: label-issue recall on planted label flips, leaks and conflicts found on
planted copies, the near-duplicate threshold, and the duplicate and outlier searches' time at 25,000 photos.

    python bench/audit.py --data ../shared/data/catsdogs [--work /tmp/dogscats-audit]

1. Builds two photo sets from --data as folders of symlinks (nothing copied but the re-encoded photos):
   - leaks: every photo, plus 10 labelled photos copied into test/ (5 the same bytes, 5 re-encoded at JPEG quality 70
     and resized by 10%), and 5 labelled photos copied into train/ under the other class (conflicting labels);
   - flips: every photo, 40 labelled photos (seeded) under the other class's name (with new numbers).
2. Runs the pipeline's stages (`python -m stages.X`, this checkout's code, default params) on a scratch project of
   each: prepare, features, train, finetune, predict (and export for the flips, whose page shows the label issues'
   class activation maps), audit. The features stage runs once, on the leaks set: the other projects' feature files
   are assembled from it by md5 (the same bytes give the same features).
3. Prints: the cosine similarity of the re-encoded copies to their originals and the highest similarities between
   the sample's distinct photos (to choose audit.near_duplicate); whether every planted leak and conflict was
   flagged; the recall of the flipped labels among the top 40, 60 and 100 label issues; the times.
4. Overrides: a clean project (the sample as it is) and an overridden one (the flips set, with the flipped photos
   found among the top 60 label issues excluded by its data/overrides.csv) run prepare to predict; prints the
   out-of-fold log loss over the photos never flipped in the clean, flipped and overridden projects.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dogscats.base.scoring import log_loss  # noqa: E402
from dogscats.data.dataset import classes_of, read_manifest  # noqa: E402
from dogscats.data.feature_store import read_split, write_split  # noqa: E402
from dogscats.data.predictions import read_prediction_table, read_probabilities  # noqa: E402
from dogscats.models.audit import audit_features, neighbour_search, outlier_scores, outliers, unit_rows  # noqa: E402

BACKBONE = "efficientnet_lite2"
FLIPS, LEAKS, CONFLICTS = 40, 10, 5


def cpu() -> str:
    """The CPU's model and core count."""
    info = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    return f"{model}, {os.cpu_count()} cores"


def number(path: Path) -> int:
    """The N of cat.N.jpg or N.jpg."""
    return int(re.findall(r"(\d+)\.jpg$", path.name)[0])


def other_class(path: Path) -> str:
    """dog for a cat photo, cat for a dog photo."""
    return "dog" if path.name.startswith("cat.") else "cat"


def link_all(data: Path, raw: Path) -> tuple[list[Path], int, int]:
    """raw/train and raw/test as symlinks to every photo under data; the labelled sources, the largest N of each."""
    shutil.rmtree(raw, ignore_errors=True)
    for sub in ("train", "test"):
        (raw / sub).mkdir(parents=True)
        for source in sorted((data / sub).glob("*.jpg")):
            (raw / sub / source.name).symlink_to(source.resolve())
    labelled = sorted((data / "train").glob("*.jpg"))
    return labelled, max(map(number, labelled)), max(map(number, (data / "test").glob("*.jpg")))


def build_leaks(data: Path, raw: Path, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The leaks set; the planted (labelled id, test id) leaks and (labelled id, labelled id) conflicts."""
    labelled, top, top_test = link_all(data, raw)
    chosen = [labelled[i] for i in np.random.default_rng(seed).choice(len(labelled), LEAKS + CONFLICTS, replace=False)]
    leaks, conflicts = [], []
    for k, source in enumerate(chosen[:LEAKS]):
        target = raw / "test" / f"{top_test + 1 + k}.jpg"
        if k < LEAKS // 2:
            target.symlink_to(source.resolve())
        else:
            with Image.open(source) as image:
                side = (round(image.width * 0.9), round(image.height * 0.9))
                image.convert("RGB").resize(side, Image.Resampling.BILINEAR).save(target, quality=70)
        leaks.append((source.stem, target.stem))
    for k, source in enumerate(chosen[LEAKS:]):
        target = raw / "train" / f"{other_class(source)}.{top + 1 + k}.jpg"
        target.symlink_to(source.resolve())
        conflicts.append((source.stem, target.stem))
    return leaks, conflicts


def build_flips(data: Path, raw: Path, seed: int) -> tuple[list[str], list[str]]:
    """The flips set; the flipped photos' ids (their new names) and their sources' ids (their names in the sample)."""
    labelled, top, _ = link_all(data, raw)
    flipped, sources = [], []
    for k, i in enumerate(sorted(np.random.default_rng(seed).choice(len(labelled), FLIPS, replace=False))):
        source = labelled[i]
        (raw / "train" / source.name).unlink()
        target = raw / "train" / f"{other_class(source)}.{top + 1 + k}.jpg"
        target.symlink_to(source.resolve())
        flipped.append(target.stem)
        sources.append(source.stem)
    return flipped, sources


def project_at(path: Path, raw: Path) -> None:
    """A scratch project: params.yaml (this checkout's, data.raw = raw); the stages run from this checkout."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw"] = str(raw)
    params["backbones"] = [BACKBONE]
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def refresh_audit_params(project: Path) -> None:
    """An earlier run's project given this checkout's audit params (the rest as it ran)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["audit"] = yaml.safe_load((REPO / "params.yaml").read_text())["audit"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage_commands() -> dict[str, list[str]]:
    """Each stage's command from dvc.yaml, for one backbone."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    commands = {}
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"].replace("${item}", BACKBONE).replace("${finetune.backbone}", BACKBONE)
        commands[name] = cmd.split()
    return commands


def run_stage(project: Path, name: str) -> float:
    """Run one stage as DVC would; its wall seconds. Stops on failure."""
    command = stage_commands()[name]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command[1:]], cwd=project, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    seconds = time.perf_counter() - start
    print(f"  {project.name}: {name} {seconds:.0f} s; {done.stdout.strip().splitlines()[-1][:200]}", flush=True)
    return seconds


def features_by_md5(source_project: Path, project: Path) -> None:
    """The project's feature file assembled from the source project's by md5 (every photo's bytes are there)."""
    source_h5 = source_project / "data" / "features" / f"{BACKBONE}.h5"
    source_manifest = pd.read_csv(source_project / "data" / "split.csv", dtype=str, keep_default_na=False)
    manifest = pd.read_csv(project / "data" / "split.csv", dtype=str, keep_default_na=False)
    md5_of = source_manifest.set_index(["split", "id"]).md5
    rows = {}
    for split in ("train", "test"):
        part = read_split(source_h5, split)
        for index, id_ in enumerate(part.ids):
            rows[md5_of[(split, id_)]] = (part.features[index], bool(part.usable[index]))
    target = project / "data" / "features" / f"{BACKBONE}.h5"
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source_h5, "r") as source, h5py.File(target, "w") as h5:
        h5.attrs.update(dict(source.attrs))
        classes = [str(c) for c in source.attrs["classes"]]
        for split in ("train", "test"):
            part = manifest[manifest.split == split]
            labels = np.array([classes.index(label) if label else -1 for label in part.label])
            found = [rows[md5] for md5 in part.md5]
            features = np.stack([f for f, _ in found]).astype(np.float32)
            write_split(h5, split, part.id.tolist(), labels, [u for _, u in found], [features], features.shape[1])


def oof_log_loss(project: Path, ids: set[str]) -> tuple[float, int]:
    """The final out-of-fold log loss (clipped, as predict writes it) over the given labelled ids, and their count."""
    classes = classes_of(read_manifest(project / "data" / "split.csv").label)
    oof = read_prediction_table(project / "data" / "oof_predictions.csv")
    oof = oof[oof.id.isin(ids)]
    return log_loss(oof.label.to_numpy(), read_probabilities(oof, classes)), len(oof)


def overrides_runs(
    data: Path,
    work: Path,
    leaks_project: Path,
    flips_project: Path,
    flipped: list[str],
    sources: list[str],
    found: list[str],
) -> None:
    """Acceptance 4: the clean sample, the flipped one and the flipped one with the found flips excluded by
    data/overrides.csv, each scored out of fold over the photos never flipped (the same ids in all three)."""
    clean_project, fixed_project = work / "clean", work / "overridden"
    link_all(data, work / "raw-clean")
    project_at(clean_project, work / "raw-clean")
    project_at(fixed_project, work / "raw-flips")
    excluded = [i for i in found if i in set(flipped)]
    (fixed_project / "data").mkdir()
    pd.DataFrame({"id": excluded, "action": "exclude"}).to_csv(fixed_project / "data" / "overrides.csv", index=False)
    print(f"overrides: {len(excluded)} found flips excluded by {fixed_project / 'data' / 'overrides.csv'}", flush=True)
    for project in (clean_project, fixed_project):
        run_stage(project, "prepare")
        features_by_md5(leaks_project, project)
        for name in ("train", "finetune", "predict"):
            run_stage(project, name)
    labelled = read_manifest(clean_project / "data" / "split.csv").query("split == 'train'").id
    never = set(labelled) - set(sources)
    for name, project in (("clean", clean_project), ("flipped", flips_project), ("overridden", fixed_project)):
        loss, n = oof_log_loss(project, never)
        own = json.loads((project / "metrics" / "predict.json").read_text())["cv_logloss"]
        print(
            f"  {name}: out-of-fold log loss {loss:.5f} over the {n} photos never flipped (cv_logloss {own:.5f} over"
            f" its own {len(read_prediction_table(project / 'data' / 'oof_predictions.csv'))} labelled photos)"
        )


def pair_flagged(audit: pd.DataFrame, pair: tuple[str, str], kind: str) -> bool:
    """Whether the audit has a row of that kind for the two photos (either order)."""
    rows = audit[audit.kind == kind]
    return bool(
        ((rows.id == pair[0]) & (rows.other_id == pair[1]) | (rows.id == pair[1]) & (rows.other_id == pair[0])).any()
    )


def similarities(project: Path, leaks: list[tuple[str, str]], conflicts: list[tuple[str, str]]) -> None:
    """The re-encoded copies' cosine to their originals, and the highest cosines between the sample's own photos."""
    train, test = (read_split(project / "data" / "features" / f"{BACKBONE}.h5", s) for s in ("train", "test"))
    ids = train.ids + test.ids
    unit = unit_rows(np.concatenate([train.features, test.features]))
    where = {id_: i for i, id_ in enumerate(ids)}
    reencoded = [float(unit[where[a]] @ unit[where[b]]) for a, b in leaks[LEAKS // 2 :]]
    print(f"re-encoded (quality 70, 90% side) copies' cosine to their originals: {np.round(reencoded, 4).tolist()}")
    planted = {b for _, b in leaks + conflicts}
    own = [i for i, id_ in enumerate(ids) if id_ not in planted]
    sim = unit[own] @ unit[own].T
    upper = sim[np.triu_indices(len(own), k=1)]
    print(f"the sample's {len(upper):,} pairs of distinct files: quantiles 50% {np.quantile(upper, 0.5):.3f}, "
          f"99% {np.quantile(upper, 0.99):.3f}, 99.99% {np.quantile(upper, 0.9999):.3f}, "
          f"99.999% {np.quantile(upper, 0.99999):.3f}")  # fmt: skip
    order = np.argsort(upper)[::-1][:15]
    rows, cols = np.triu_indices(len(own), k=1)
    top = [(ids[own[rows[k]]], ids[own[cols[k]]], round(float(upper[k]), 4)) for k in order]
    print(f"their 15 most similar pairs: {top}")
    bins = [0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.01]
    print(f"pairs per cosine bin {bins}: {np.histogram(upper, bins=bins)[0].tolist()}")


def outlier_summary(project: Path) -> str:
    """The outlier scores' quartiles, the fence's value and the highest scores, with their ids."""
    train, test = (read_split(project / "data" / "features" / f"{BACKBONE}.h5", s) for s in ("train", "test"))
    ids, features = train.ids + test.ids, np.concatenate([train.features, test.features])
    scores = outlier_scores(
        features, yaml.safe_load((project / "params.yaml").read_text())["audit"]["outlier_neighbours"]
    )
    q1, q3 = np.percentile(scores, [25, 75])
    top = [(ids[i], round(float(scores[i]), 3)) for i in np.argsort(-scores)[:10]]
    fences = f"Q3 + 3 IQR {q3 + 3 * (q3 - q1):.3f}, + 1.5 IQR {q3 + 1.5 * (q3 - q1):.3f}"
    return f"quartiles {q1:.3f}, {q3:.3f}; {fences}; the highest {top}"


def search_comparison(project: Path, threshold: float = 0.95, fence: float = 1.5) -> None:
    """The index's near-duplicate pairs and outliers against the exact search's, on a project's feature files."""
    ids, features, usable = audit_features([str(project / "data" / "features" / f"{BACKBONE}.h5")])
    kept = np.flatnonzero(usable)
    exact, exact_scores = neighbour_search(features, usable, threshold, 10, "exact")
    start = time.perf_counter()
    found, scores = neighbour_search(features, usable, threshold, 10, "index")
    seconds = time.perf_counter() - start
    truth, got = set(zip(exact.i, exact.j, strict=True)), set(zip(found.i, found.j, strict=True))
    far = [set(outliers([ids[i] for i in kept], s, fence).id) for s in (exact_scores, scores)]
    print(f"index against exact search, {len(kept):,} photos of {project.name}: near pairs at {threshold} "
          f"{len(truth & got)} of {len(truth)} (recall {len(truth & got) / max(len(truth), 1):.4f}, "
          f"{len(got - truth)} not in the exact set); outliers flagged: exact {len(far[0])}, index {len(far[1])}, "
          f"both {len(far[0] & far[1])} (only exact {sorted(far[0] - far[1])}, only index {sorted(far[1] - far[0])}); "
          f"largest outlier score difference {np.abs(scores - exact_scores).max():.4f}; {seconds:.1f} s")  # fmt: skip


def scale_timing(sizes: tuple[int, ...] = (10_000, 25_000, 50_000, 100_000), dim: int = 1280) -> None:
    """The neighbour search's time, exact and by the index, on rows x dim random non-negative features (GAP-like),
    with this process's peak memory after each."""
    rng = np.random.default_rng(0)
    for rows in sizes:
        features = unit_rows(np.abs(rng.normal(size=(rows, dim))).astype(np.float32))
        usable = np.ones(rows, dtype=bool)
        times = {}
        for method in ("index", "exact"):
            start = time.perf_counter()
            neighbour_search(features, usable, 0.95, 10, method)
            times[method] = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"at {rows:,} x {dim}: neighbour search exact {times['exact']:.1f} s, index {times['index']:.1f} s "
              f"(features {features.nbytes / 2**30:.2f} GiB, peak resident {peak:.2f} GiB)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "catsdogs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dogscats-audit"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 25,000-photo timing")
    parser.add_argument("--skip-overrides", action="store_true", help="leave out the clean and overridden runs")
    parser.add_argument("--audit-only", action="store_true", help="rerun only the audit of an earlier run's projects")
    args = parser.parse_args()
    data, work = args.data.resolve(), args.work.absolute()
    print(f"machine: {cpu()}", flush=True)
    leaks, conflicts = build_leaks(data, work / "raw-leaks", args.seed)
    flipped, sources = build_flips(data, work / "raw-flips", args.seed)

    leaks_project, flips_project = work / "leaks", work / "flips"
    if not args.audit_only:
        project_at(leaks_project, work / "raw-leaks")
        for name in ("prepare", "features", "train", "finetune", "predict"):
            run_stage(leaks_project, name)
    refresh_audit_params(leaks_project)
    run_stage(leaks_project, "audit")
    audit = pd.read_csv(leaks_project / "data" / "audit.csv", dtype={"id": str, "other_id": str}, keep_default_na=False)
    found_leaks = [pair_flagged(audit, pair, "leak") for pair in leaks]
    found_conflicts = [pair_flagged(audit, pair, "conflict") for pair in conflicts]
    same, reencoded = found_leaks[: LEAKS // 2], found_leaks[LEAKS // 2 :]
    print(f"leaks flagged: {sum(found_leaks)} of {LEAKS} (same bytes {same}, re-encoded {reencoded}); "
          f"conflicts flagged: {sum(found_conflicts)} of {CONFLICTS}")  # fmt: skip
    print(f"leaks project's findings: {audit.kind.value_counts().to_dict()}")
    similarities(leaks_project, leaks, conflicts)
    search_comparison(leaks_project)

    if not args.audit_only:
        project_at(flips_project, work / "raw-flips")
        run_stage(flips_project, "prepare")
        features_by_md5(leaks_project, flips_project)
        for name in ("train", "finetune", "predict", "export"):  # the export: the page's class activation maps
            run_stage(flips_project, name)
    refresh_audit_params(flips_project)
    run_stage(flips_project, "audit")
    audit = pd.read_csv(flips_project / "data" / "audit.csv", dtype={"id": str}, keep_default_na=False)
    ranked = audit[audit.kind == "label"].id.tolist()
    recall = {k: len(set(ranked[:k]) & set(flipped)) for k in (40, 60, 100)}
    print(f"label issues: {len(ranked)}; flipped among the top 40, 60, 100: "
          + ", ".join(f"{n}/{FLIPS}" for n in recall.values()))  # fmt: skip
    missed = sorted(set(flipped) - set(ranked[:60]))
    print(f"flipped photos not in the top 60: {missed}; other label issues in the top 60: "
          f"{[i for i in ranked[:60] if i not in set(flipped)]}")  # fmt: skip
    print(f"flips project's findings: {audit.kind.value_counts().to_dict()}")
    print(f"outliers: {outlier_summary(flips_project)}")
    if not args.skip_overrides:
        overrides_runs(data, work, leaks_project, flips_project, flipped, sources, ranked[:60])
    if not args.skip_scale:
        scale_timing()


if __name__ == "__main__":
    main()
