"""Verification in onnxruntime: every rewrite checked locally, the outputs against the noise floor.

``check`` runs both models (``verify``, ``verify_sizes``); ``local`` builds the
local copies of the rewritten nodes and their magnitude twins; ``feeds`` makes
or reads the inputs they run on.
"""
