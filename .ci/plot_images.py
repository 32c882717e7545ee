"""Turn `dvc plots diff --json` (read from stdin) into images for the pull-request comment, as CML's documentation
does: each plot's Vega-Lite spec is written to OUT_DIR/<name>.vl.json and, where vega-cli's `vl2png` is installed
(iterative/setup-cml with `vega: true`), rendered to OUT_DIR/<name>.png; prints the Markdown that shows them.
Exits 1 if DVC could not draw a plot of the workspace, after printing why."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


def file_name(plot_id: str) -> str:
    """A plot id (a name, or a file path for DVCLive's curves) as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot_id.removeprefix("metrics/live/").replace("/plots/metrics/", "/"))


def main(out_dir: str) -> int:
    """Write the specs and images; print the Markdown."""
    report = json.load(sys.stdin)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vl2png = shutil.which("vl2png")
    lines = []
    for plot_id, renders in report.get("data", {}).items():
        for render in renders:
            if render.get("type") != "vega":
                continue
            name = file_name(plot_id)
            spec = out / f"{name}.vl.json"
            spec.write_text(json.dumps(render["content"]))
            title = render["content"].get("title") or plot_id
            title = title.get("text", plot_id) if isinstance(title, dict) else title
            if vl2png:
                with (out / f"{name}.png").open("wb") as png:
                    subprocess.run([vl2png, str(spec), "-s", "1.5"], stdout=png, check=True)
                lines.append(f"![{title}](./{out / name}.png)")
            else:
                lines.append(f"- {title}: `{spec}` (install vega-cli for an image)")
    # A plot the base revision lacks (a new plot) is only noted; one the workspace cannot draw fails the run.
    errors = report.get("errors", [])
    for error in errors:
        where = f"{error.get('name', '?')} ({error.get('rev', '?')})"
        lines.append(f"- **{'error' if error.get('rev') == 'workspace' else 'missing'}** {where}: {error.get('msg')}")
    print("\n".join(lines))
    return 1 if any(error.get("rev") == "workspace" for error in errors) else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
