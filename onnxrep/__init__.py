"""onnxrep: structural re-parameterization of exported ONNX models."""

from onnxrep.api import optimize
from onnxrep.errors import OnnxrepError
from onnxrep.report import Report

__all__ = ["OnnxrepError", "Report", "optimize"]
__version__ = "0.1.0"
