"""Draw label issues of an audited project as the audit page shows them, for docs/: each photo as the network saw it
beside its class activation map for the suggested class, captioned with the given and suggested labels.

    python bench/audit_picture.py /tmp/dogscats-audit/flips docs/audit.jpg [--ids cat.1023 dog.1003 ...]

The project needs data/audit.csv, models/classifier (the export) and params.yaml's data.raw (bench/audit.py leaves
its flips project so). Without --ids: the first 8 label issues.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dogscats.data.dataset import image_root  # noqa: E402
from dogscats.product.classifier import Classifier  # noqa: E402
from dogscats.product.explain import explain, overlay  # noqa: E402

SIDE, CAPTION, PER_ROW = 200, 34, 4  # each image's side, the caption's height, pairs per row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ids", nargs="*", help="label issues to draw, in this order (default: the first 8)")
    args = parser.parse_args()
    table = pd.read_csv(args.project / "data" / "audit.csv", dtype={"id": str}, keep_default_na=False)
    issues = table[table.kind == "label"].set_index("id", drop=False)
    rows = issues.loc[args.ids] if args.ids else issues.head(8)
    raw = yaml.safe_load((args.project / "params.yaml").read_text())["data"]["raw"]
    root = image_root(raw if Path(raw).is_absolute() else args.project / raw)
    classifier = Classifier.load(args.project / "models" / "classifier")
    classes = classifier.settings["classes"]
    found = explain(classifier, [root / f for f in rows.file], [classes.index(c) for c in rows.suggested])
    columns, lines = min(PER_ROW, len(rows)), -(-len(rows) // PER_ROW)
    sheet = Image.new("RGB", (columns * 2 * SIDE, lines * (SIDE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (row, explanation) in enumerate(zip(rows.itertuples(), found, strict=True)):
        x, y = (k % PER_ROW) * 2 * SIDE, (k // PER_ROW) * (SIDE + CAPTION)
        sheet.paste(Image.fromarray(explanation.image).resize((SIDE, SIDE)), (x, y))
        sheet.paste(overlay(explanation.image, explanation.cam).resize((SIDE, SIDE)), (x + SIDE, y))
        draw.text((x + 4, y + SIDE + 2), f"{row.id}: labelled {row.given}", fill="black")
        draw.text((x + 4, y + SIDE + 17), f"looks like {row.suggested} (score {row.score:.3f})", fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=85)  # a .jpg keeps docs/ small
    print(f"{args.out}: {len(rows)} label issues, {sheet.size[0]} x {sheet.size[1]}")


if __name__ == "__main__":
    main()
