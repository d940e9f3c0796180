"""Patient context: judge each lesion against the same patient's other lesions (the "ugly duckling").

features.py computes per-image features from an image run's scores and embeddings within each patient;
stage.py is the second-stage model on them (stored without pickle); fit.py is the `context fit` command that
writes a CONTEXT_RUN dir (spec.py), and predictor.py scores with one for evaluate, compare and predict.
"""
