"""Evaluation layer: labellers, distribution metrics, likelihood, aggregation and reports."""

from mfllm.evaluation.aggregate import bootstrap_mean, headline, method_table
from mfllm.evaluation.dimensions import BUILTIN_DIMENSIONS, SDQC, Dimension, load_dimensions, resolve_dimensions
from mfllm.evaluation.evaluate import RunEvaluation, evaluate_run, policy_nll
from mfllm.evaluation.labellers import (KindLabeller, LabelItem, Labeller, LabellerChain, LabelResult, LexiconLabeller,
                                        LLMJudgeLabeller, parse_label_answer)
from mfllm.evaluation.metrics import compare_streams, dtw_distance, js_divergence, kl_divergence, window_ids
from mfllm.evaluation.report import write_metrics, write_report

__all__ = ["BUILTIN_DIMENSIONS", "SDQC", "Dimension", "KindLabeller", "LLMJudgeLabeller", "LabelItem", "LabelResult", "Labeller",
           "LabellerChain", "LexiconLabeller", "RunEvaluation", "bootstrap_mean", "compare_streams", "dtw_distance", "evaluate_run",
           "headline", "js_divergence", "kl_divergence", "load_dimensions", "method_table", "parse_label_answer", "policy_nll",
           "resolve_dimensions", "window_ids", "write_metrics", "write_report"]
