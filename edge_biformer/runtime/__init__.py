"""Execution of rewritten graphs outside TensorRT (onnxruntime on the CPU)."""

from edge_biformer.runtime.cpu import cpu_session, prepare_for_cpu

__all__ = ["cpu_session", "prepare_for_cpu"]
