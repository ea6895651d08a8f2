"""Evaluation: reconstruction metrics, ground-truth recovery, absorption, store evaluation and splicing."""
