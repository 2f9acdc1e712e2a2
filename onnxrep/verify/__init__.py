"""Verification in onnxruntime: every rewrite checked locally, the outputs against the noise floor.

``check`` runs both models (``verify``: at every size the model needs, as optimize does; ``verify_at``:
at one size); ``sizes`` chooses those sizes; ``local`` builds the local copies of the rewritten nodes and
their magnitude twins; ``feeds`` makes or reads the inputs they run on; ``tolerance`` holds the bounds.
"""
