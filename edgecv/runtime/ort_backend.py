"""ONNX Runtime backend: CPU now; CUDA / TensorRT execution providers when the install has them."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from edgecv.runtime.backend import Backend, TensorSpec


def session_options(threads: Optional[int] = None, profile_prefix: Optional[str] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def default_providers(preferred: Sequence[str] = ("TensorrtExecutionProvider", "CUDAExecutionProvider")) -> List[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in preferred if p in avail] + ["CPUExecutionProvider"]


class OrtBackend(Backend):
    """One ``InferenceSession``; input checked against the model's spec before every run."""

    name = "onnxruntime"

    def __init__(self, model_path: str, threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 profile_prefix: Optional[str] = None):
        import onnxruntime as ort

        self.path = str(model_path)
        self.session = ort.InferenceSession(self.path, sess_options=session_options(threads, profile_prefix),
                                            providers=providers or ["CPUExecutionProvider"])
        i = self.session.get_inputs()[0]
        self._input = TensorSpec(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape), np.float32)
        self._outputs = [TensorSpec(o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape), np.float32)
                         for o in self.session.get_outputs()]
        self._names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> List[TensorSpec]:
        return [self._input]

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._outputs

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_input(batch)
        return self.session.run(self._names, {self._input.name: batch})[0]

    def run_unchecked(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._names, {self._input.name: batch})[0]

    def end_profiling(self) -> str:
        return self.session.end_profiling()

    def close(self) -> None:
        self.session = None
