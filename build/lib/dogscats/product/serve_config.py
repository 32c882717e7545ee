"""The server's settings (`dogscats serve`): light, so that the command line reads them without the web stack."""

import json
import os
from dataclasses import asdict, dataclass

TOKEN_VARIABLE = "DOGSCATS_TOKEN"  # the bearer token, where --token is not given
CONFIG_VARIABLE = "DOGSCATS_SERVE_CONFIG"  # how `--workers N` hands the settings to uvicorn's worker processes
# The limits the command line sets, with its help: README's "Serve" states them.
SERVE_LIMITS = {
    "max_upload_mb": "the largest request body, in MiB",
    "max_files": "the most photos a request",
    "timeout_s": "the longest a request may take, in seconds",
    "window_ms": "how long a batch waits for more photos after its first, in ms",
    "max_batch": "the most photos a run of the network",
}


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings: the model folder and every limit."""

    model: str = "models/classifier"
    max_upload_mb: float = 50.0
    max_files: int = 64
    timeout_s: float = 30.0
    window_ms: float = 5.0
    max_batch: int = 32
    token: str = ""  # when set, every request but the page, /healthz and /readyz needs `Authorization: Bearer <token>`
    threads: int = 0  # ONNX Runtime's intra-op threads (0: one per core)
    decoders: int = 0  # photo decoding threads (0: one per core)
    reload_s: float = 1.0  # how often the model folder is polled, in seconds

    def problems(self) -> list[str]:
        """What is wrong with the settings, one phrase each."""
        positive = ("max_upload_mb", "max_files", "timeout_s", "max_batch", "reload_s")
        found = [
            f"{name} must be above 0 (it is {getattr(self, name)})" for name in positive if getattr(self, name) <= 0
        ]
        others = ("window_ms", "threads", "decoders")
        return found + [
            f"{name} must be at least 0 (it is {getattr(self, name)})" for name in others if getattr(self, name) < 0
        ]

    def to_json(self) -> str:
        """The settings as from_environment reads them."""
        return json.dumps(asdict(self))


def from_environment() -> ServeConfig:
    """The settings a `dogscats serve --workers N` put in CONFIG_VARIABLE, for a worker process."""
    return ServeConfig(**json.loads(os.environ[CONFIG_VARIABLE]))
