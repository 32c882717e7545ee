"""dogscats: the pipeline's library, one package per layer (docs/architecture.md); `from dogscats import Classifier`
is the exported classifier."""

__all__ = ["Classifier"]


def __getattr__(name: str):
    """Classifier on first use (PEP 562), so that importing a lower layer does not load the product and its runtime."""
    if name == "Classifier":
        from dogscats.product.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'dogscats' has no attribute {name!r}")
