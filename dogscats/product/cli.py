"""The `dogscats` console command: `dogscats classify PATH... [--model DIR] [--out FILE] [--workers auto|WxT]
[--explain DIR]`; `dogscats serve` (the HTTP API and upload page) and `dogscats review` (the audit's suspects in the
browser) start the server of dogscats.product.server.

Writes CSV, one row per image: path, p_<class> per class in the model's order, and class (the most probable, as the
pipeline decides: with two classes, the second from p = 0.5 on); when a file cannot be read, a last column, error,
says why, and its probabilities are empty. Exit status 0, 1 when a row has an error, 2 for bad arguments or a model
folder that is not an exported classifier (one line on stderr). --explain DIR also writes, per readable image, DIR/<its
name without suffix>.cam.png, at its path under the folder given that holds it (the tree mirrored, under the folder's
own name when several paths are given; two images that would still share a file stop the run before any work, status
2): the image as the network saw it with the class activation map of its predicted class drawn over it
(dogscats.product.explain)"""

import argparse
import csv
import io
import os
import secrets
import sys
from pathlib import Path

from tqdm import tqdm

from dogscats.base.atomic import atomic_path
from dogscats.base.scoring import predicted_class
from dogscats.engine.workers import worker_layout
from dogscats.product.classifier import Classifier, ModelError, image_files
from dogscats.product.explain import cam_head, explanations, overlay
from dogscats.product.reload import checked
from dogscats.product.serve_config import SERVE_LIMITS, TOKEN_VARIABLE, ServeConfig

PROGRESS_FROM = 5  # images: a progress bar on stderr for more than this many
BATCH = 16


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand, classify."""
    main = argparse.ArgumentParser(prog="dogscats", description="Use a classifier exported by the dogscats pipeline.")
    commands = main.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="class probabilities of image files, as CSV")
    classify.add_argument("paths", nargs="+", type=Path, help="image files, or folders searched recursively")
    classify.add_argument("--model", type=Path, default=Path("models/classifier"), help="default: models/classifier")
    classify.add_argument("--out", type=Path, help="write the CSV here (default: stdout)")
    classify.add_argument(
        "--workers",
        type=layout,
        default="auto",
        help="WxT: W worker processes of T threads each (e.g. 2x1), or auto (default): one per core",
    )
    classify.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="also write DIR/<image name>.cam.png per image: where in the photo the evidence for its class lies (a"
        " class activation map over the image as the network saw it; a second pass over the images)",
    )
    serve = commands.add_parser("serve", help="the classifier behind a local HTTP API and an upload page")
    serve.add_argument(
        "model", nargs="?", type=Path, default=Path("models/classifier"), help="default: models/classifier"
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument("--workers", default="auto", help="server processes: N, or auto (default): one per 4 cores")
    serve.add_argument("--token", help=f"require Authorization: Bearer TOKEN (default: ${TOKEN_VARIABLE}, else none)")
    review = commands.add_parser(
        "review", help="the audit's suspects in the browser, each decision written to data/overrides.csv"
    )
    review.add_argument("project", nargs="?", type=Path, default=Path("."), help="the project (default: here)")
    review.add_argument("--port", type=int, default=8001, help="default: 8001 (on 127.0.0.1: this machine only)")
    defaults = ServeConfig()
    for name, help_text in SERVE_LIMITS.items():
        default = getattr(defaults, name)
        option = "--" + name.replace("_", "-")
        serve.add_argument(option, type=type(default), default=default, help=f"{help_text} (default: {default})")
    return main


def layout(text: str) -> str:
    """A --workers value, checked (argparse reports the error and exits with status 2)."""
    try:
        worker_layout(text, cores=1, memory=0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def workers_for(setting: str, files: int) -> tuple[int, int]:
    """(W, T) for classifying `files` files: no more workers than batches; one worker takes every thread."""
    workers, threads = worker_layout(setting)
    used = max(1, min(workers, -(-files // BATCH)))
    return (used, threads) if used > 1 else (1, workers * threads)


def rows(
    model: Classifier, paths: list[Path], progress: bool, workers: tuple[int, int] = (1, 0)
) -> tuple[list[list[str]], int]:
    """The CSV rows for the paths, and how many have an error; workers (W, T) as Classifier.batches takes them."""
    out, errors = [], 0
    with tqdm(total=len(paths), desc="classify", unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch_rows, batch_errors, probabilities in model.batches(paths, BATCH, workers):
            good = zip(probabilities, predicted_class(probabilities), strict=True)
            for i, error in zip(batch_rows, batch_errors, strict=True):
                if error:
                    out.append([str(paths[i]), *[""] * len(model.classes), "", error])
                    errors += 1
                else:
                    p, predicted = next(good)
                    out.append([str(paths[i]), *(f"{v:.8g}" for v in p), model.classes[predicted], ""])
            bar.update(len(batch_rows))
    return out, errors


def overlay_names(given: list[Path]) -> list[Path]:
    """Each image's overlay file, relative to the --explain folder, in image_files' order: <name without
    suffix>.cam.png at its path under the folder given that holds it (the tree mirrored; under that folder's own name
    when several paths are given, so two cameras' IMG_0001.jpg stay apart), or at the top for a file given by name."""
    names = []
    for path in given:
        for file in image_files([path]):
            relative = file.relative_to(path) if path.is_dir() else Path(file.name)  # never a .. from a folder scan
            if path.is_dir() and len(given) > 1:
                relative = Path(path.resolve().name) / relative
            names.append(relative.with_name(f"{relative.stem}.cam.png"))
    return names


def overlay_clash(files: list[Path], names: list[Path]) -> str:
    """Two different images whose overlays would share a file, as a message naming them; "" when there are none."""
    first: dict[Path, Path] = {}
    for file, name in zip(files, names, strict=True):
        other = first.setdefault(name, file)
        if other.resolve() != file.resolve():
            return f"{other} and {file} would both write {name}: give them different names, or explain them apart"
    return ""


def write_overlays(
    model: Classifier, paths: list[Path], names: list[Path], table: list[list[str]], folder: Path, progress: bool
) -> None:
    """Per readable image (its row has no error), its overlay (the map of the class in its row) in the folder, at
    its name there (overlay_names)."""
    readable = [(path, name, row) for path, name, row in zip(paths, names, table, strict=True) if not row[-1]]
    targets = [model.classes.index(row[-2]) for _, _, row in readable]
    explained = explanations(model, [path for path, _, _ in readable], targets, BATCH)
    with tqdm(total=len(readable), desc="explain", unit="img", disable=not progress, file=sys.stderr) as bar:
        for (_, name, _), explanation in zip(readable, explained, strict=True):
            with atomic_path(folder / name, suffix=".png") as tmp:  # makes the name's folders
                overlay(explanation.image, explanation.cam).save(tmp, format="PNG")
            bar.update()


def serve_workers(setting: str, cores: int) -> int:
    """Server processes for --workers: a count, or auto: one per 4 cores (each runs the network on several)."""
    if setting == "auto":
        return max(1, cores // 4)
    if not setting.isdigit() or int(setting) < 1:
        raise ValueError(f"--workers {setting}: a count of processes (1, 2, ...) or auto")
    return int(setting)


def web_stack_missing(command: str, err: ImportError) -> int:
    """Say which package of the serve extra is missing and how to install it; the exit status, 2."""
    print(
        f"dogscats {command}: {err.name} is missing: pip install 'dogscats[serve]' (or requirements.txt)",
        file=sys.stderr,
    )
    return 2


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; 2 when the settings or the model folder are wrong (one line on stderr)."""
    try:
        from dogscats.product import server
    except ImportError as err:
        return web_stack_missing("serve", err)
    limits = {name: getattr(args, name) for name in SERVE_LIMITS}
    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE, "")
    try:
        workers = serve_workers(args.workers, os.cpu_count() or 1)
        threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0  # the processes share the cores
        config = ServeConfig(model=str(args.model), token=token, threads=threads, decoders=threads, **limits)
        if config.problems():
            raise ValueError("; ".join(config.problems()))
        checked(args.model)  # before the port is taken: a folder that is not a classifier stops here
    except (ValueError, ModelError) as err:
        print(f"dogscats serve: {err}", file=sys.stderr)
        return 2
    server.run(config, args.host, args.port, workers)
    return 0


def review(args: argparse.Namespace) -> int:
    """Run the review page on 127.0.0.1 until interrupted; 2 when the project lacks its audit (one line on stderr)."""
    try:
        from dogscats.product import server
        from dogscats.product.review import open_project
        from dogscats.product.review_api import Review
    except ImportError as err:
        return web_stack_missing("review", err)
    try:
        project = open_project(args.project)
    except ValueError as err:  # DataError: a file missing, and the command that makes it
        print(f"dogscats review: {err}", file=sys.stderr)
        return 2
    config = ServeConfig(model=str(project.root / "models" / "classifier"))  # the maps: the project's classifier
    print(f"dogscats review: http://127.0.0.1:{args.port}/review (Ctrl+C to stop)", file=sys.stderr)
    server.run(config, "127.0.0.1", args.port, review=Review(project, secrets.token_urlsafe(24)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "review":
        return review(args)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"dogscats classify: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    paths = image_files(args.paths)
    names = overlay_names(args.paths) if args.explain else []
    clash = overlay_clash(paths, names) if args.explain else ""
    if clash:
        print(f"dogscats classify --explain: {clash}", file=sys.stderr)
        return 2
    try:
        workers = workers_for(args.workers, len(paths))
        model = Classifier.load(args.model, threads=workers[1] if workers[0] == 1 else 1)  # workers load their own
        if args.explain:
            cam_head(model)  # before any work: a classifier without maps stops here
        table, errors = rows(model, paths, len(paths) > PROGRESS_FROM, workers)
        if args.explain:
            write_overlays(model, paths, names, table, args.explain, len(paths) > PROGRESS_FROM)
    except ModelError as err:  # a model folder that does not load, or a graph that fails as it runs: nothing written
        print(f"dogscats classify: {err}", file=sys.stderr)
        return 2
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    header = ["path", *(f"p_{c}" for c in model.classes), "class"]
    writer.writerow(header + ["error"] if errors else header)  # the error column only when a file has one
    writer.writerows(row if errors else row[:-1] for row in table)
    if args.out:
        with atomic_path(args.out, suffix=args.out.suffix or ".csv") as tmp:
            tmp.write_text(text.getvalue())
    else:
        sys.stdout.write(text.getvalue())
    if errors:
        print(
            f"dogscats classify: {errors} of {len(paths)} file(s) could not be read (see the error column)",
            file=sys.stderr,
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
