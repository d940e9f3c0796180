"""Inference from a RUN dir alone: no Lightning, no dataset directory needed."""
