"""Live training curves with DVCLive: each epoch's figures are appended to `<dir>/plots/metrics/<name>.tsv` as soon
as the epoch ends, so `dvc plots show`, the VS Code extension and Studio draw the curves while a stage runs, and a
killed run keeps its curve so far. No timestamps, so the files are byte-reproducible; the stage's own metrics JSON
stays the only thing `dvc exp show` compares."""

from collections.abc import Mapping

from dvclive import Live
from scmrepo.exceptions import SCMError


class PipelineLive(Live):
    """DVCLive's logger, working in a git repository without commits too: there dvclive 3.49 fails looking up the
    current commit ("Empty git repo", treeverse/dvclive#522), which the curves do not need."""

    def _init_dvc(self) -> None:
        """DVCLive's own repository lookups, skipped where git has no commit yet."""
        try:
            super()._init_dvc()
        except SCMError:
            self._dvc_repo = None


def open_live(directory: str) -> Live:
    """A DVCLive logger writing into `directory` (emptied first), and nothing else: dvc.yaml declares the plots, the
    DVC pipeline makes the experiment, and there is no report."""
    return PipelineLive(directory, dvcyaml=None, save_dvc_exp=False, report=None)


def log_epoch(live: Live, step: int, figures: Mapping[str, float], prefix: str = "") -> None:
    """Append one row per figure at `step` (epochs completed), `prefix/name` when a prefix is given, and flush."""
    live.step = step
    for name, value in figures.items():
        live.log_metric(f"{prefix}/{name}" if prefix else name, float(value))
    live.next_step()  # writes the summary and tells the VS Code extension a step has ended
