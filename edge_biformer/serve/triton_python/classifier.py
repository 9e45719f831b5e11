"""Triton Python-backend model: an edge-biformer ONNX graph in onnxruntime on the CPU.

Written by ``edge-biformer serve-repo --onnx`` as ``<model>/1/model.py``, beside the graph. Every
request of a dynamic batch is concatenated into one onnxruntime run, then split into the responses.
Settings (``config.pbtxt`` parameters): ``onnx_file``, ``intra_op_threads`` (0: onnxruntime's
default), ``graph_optimization`` (``default`` | ``disable``: FP16/INT8 graphs run unoptimized on the
CPU), ``plugin_nodes`` (``true``: a rewritten graph, run with ``edge_biformer.runtime.cpu_session``,
so edge-biformer must be importable by the serving Python), ``static_batch`` (a graph exported with a
fixed batch: short batches are padded).

The Python backend stub needs numpy < 2 in the serving environment (numpy 2 makes every response fail
with "output tensor shape does not match size of output").
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The classifier (or backbone) graph; input and output names come from ``config.pbtxt``."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, params.get("onnx_file", "model.onnx"))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.static_batch = int(params.get("static_batch") or 0)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = int(params.get("intra_op_threads") or 0)
        if threads:
            options.intra_op_num_threads = threads
        if params.get("graph_optimization") == "disable":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if params.get("plugin_nodes") == "true":
            from edge_biformer.runtime.cpu import cpu_session

            self.session = cpu_session(path, sess_options=options)
        else:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def _run(self, batch):
        if not self.static_batch:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        outs = []
        for start in range(0, batch.shape[0], self.static_batch):
            chunk = batch[start : start + self.static_batch]
            n = chunk.shape[0]
            if n < self.static_batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.static_batch - n, axis=0)])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:n])
        return np.concatenate(outs)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        try:
            out = np.asarray(
                self._run(np.concatenate(arrays).astype(np.float32, copy=False)), dtype=np.float32
            )
        except Exception as err:  # one error response per request, never a dead model
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {err}"))] * len(
                sizes
            )
        responses, offset = [], 0
        for n in sizes:
            part = np.ascontiguousarray(out[offset : offset + n])
            offset += n
            if not np.isfinite(part).all():
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError("the model output holds NaN/Inf"))
                )
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses

    def finalize(self):
        self.session = None
