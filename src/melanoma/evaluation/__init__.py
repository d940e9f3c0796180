"""Evaluation: metrics, plots and the `evaluate` command that writes them into RUN/eval/."""
