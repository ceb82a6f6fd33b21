"""Retrieval evaluation: mAP and mP@k under the revisited (and old) Oxford/Paris protocols."""

from delfx.evaluation.revisited import (
    DEFAULT_KAPPAS,
    ProtocolScore,
    average_precision,
    evaluate,
    precision_at_k,
)

__all__ = ["DEFAULT_KAPPAS", "ProtocolScore", "average_precision", "evaluate", "precision_at_k"]
