from embedexp.eval.callback import EvaluationCallback
from embedexp.eval.evaluator import Evaluator
from embedexp.eval.metrics import ir_metrics, retrieve, spearman

__all__ = ["Evaluator", "EvaluationCallback", "ir_metrics", "retrieve", "spearman"]
