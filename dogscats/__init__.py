from dogscats.classifier import Classifier

__all__ = ["Classifier"]
