#!/usr/bin/env bash
# Acceptance 1 of issue 26 on real photos: three kinds of data.raw built from ../shared/data/catsdogs (hard links or
# copies under a scratch folder, never in the repository), each run end to end with `dvc exp run -S data.raw=...` in a
# scratch clone of this repository, then `dogscats classify` on the exported classifier.
#   kaggle:  train/cat.N.jpg, train/dog.N.jpg, no test/
#   folders: cat/*.jpg, dog/*.jpg at the top (no train/, no test/)
#   table:   labels.csv, path,label; the 500 test photos with empty labels
# Usage: bench/input_kinds.sh [scratch folder]   (prints each run's time, metrics and the classify output)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(realpath "$REPO/../shared/data/catsdogs")
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK/inputs/kaggle/train" "$WORK/inputs/folders/cat" "$WORK/inputs/folders/dog" "$WORK/inputs/table/photos"
cp -l "$SHARED"/train/*.jpg "$WORK/inputs/kaggle/train/" 2>/dev/null || cp "$SHARED"/train/*.jpg "$WORK/inputs/kaggle/train/"
for label in cat dog; do
  cp -l "$SHARED"/train/$label.*.jpg "$WORK/inputs/folders/$label/" 2>/dev/null || cp "$SHARED"/train/$label.*.jpg "$WORK/inputs/folders/$label/"
done
cp -rl "$SHARED/train" "$SHARED/test" "$WORK/inputs/table/photos/" 2>/dev/null || cp -r "$SHARED/train" "$SHARED/test" "$WORK/inputs/table/photos/"
python - "$WORK/inputs/table" <<'PY'
import sys
from pathlib import Path
root = Path(sys.argv[1])
rows = ["path,label"]
rows += [f"{p.relative_to(root).as_posix()},{p.name.split('.')[0]}" for p in sorted((root / "photos/train").glob("*.jpg"))]
rows += [f"{p.relative_to(root).as_posix()}," for p in sorted((root / "photos/test").glob("*.jpg"))]
(root / "labels.csv").write_text("\n".join(rows) + "\n")
PY
git clone -q "$REPO" "$WORK/project"
cd "$WORK/project"
git config user.email >/dev/null || git config user.email "bench@localhost"
git config user.name >/dev/null || git config user.name "bench"
for raw in "$WORK/inputs/kaggle" "$WORK/inputs/folders" "$WORK/inputs/table/labels.csv"; do
  echo "=== data.raw=$raw ($(date +%T))"
  start=$(date +%s)
  dvc exp run -q -S "data.raw=$raw" -S submit.labels=null
  echo "time: $(( $(date +%s) - start )) s"
  python -c 'import json; p=json.load(open("metrics/prepare.json")); q=json.load(open("metrics/predict.json")); s=json.load(open("metrics/submit.json")); print(p, {k: q[k] for k in ("cv_logloss", "cv_accuracy")}, s)'
  PYTHONPATH=. python -m dogscats.product.cli classify --model models/classifier "$SHARED/test/1.jpg" "$SHARED/test/2.jpg"
done
