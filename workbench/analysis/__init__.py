"""Evaluation: held-out perplexity and, later, KL / agreement with the teacher and benchmarks."""
