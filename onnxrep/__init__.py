"""onnxrep: structural re-parameterization of exported ONNX models."""

from onnxrep.errors import OnnxrepError

__all__ = ["OnnxrepError", "Report", "optimize"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``optimize`` and ``Report`` on first use: ``onnxrep --version`` need not import onnx and onnxruntime."""
    if name == "optimize":
        from onnxrep.api import optimize

        return optimize
    if name == "Report":
        from onnxrep.report.report import Report

        return Report
    raise AttributeError(f"module 'onnxrep' has no attribute {name!r}")
