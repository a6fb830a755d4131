"""Native TensorRT backend: one engine, buffers allocated once, copy/execute/copy on one stream.

Tensor-name addressing (``num_io_tensors``, ``get_tensor_name``, ``set_tensor_address``,
``set_input_shape``, ``execute_async_v3``) works on TensorRT 8.5 through 11.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edgecv.errors import DeviceError
from edgecv.runtime.backends.base import Backend, TensorSpec
from edgecv.runtime.tensorrt.compat import import_tensorrt
from edgecv.runtime.tensorrt.cuda_mem import CudaMem, open_cuda_mem

log = logging.getLogger("edgecv.runtime")


def make_layer_profiler(trt):
    """An IProfiler that accumulates per-layer times over runs (TensorRT calls report_layer_time)."""

    class LayerTimeProfiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.times: Dict[str, List[float]] = {}
            self.order: List[str] = []

        def report_layer_time(self, layer_name, ms):
            if layer_name not in self.times:
                self.times[layer_name] = []
                self.order.append(layer_name)
            self.times[layer_name].append(float(ms))

        def totals(self) -> Dict[str, float]:
            return {k: float(sum(v)) for k, v in self.times.items()}

    return LayerTimeProfiler()


class TrtBackend(Backend):
    name = "tensorrt"
    runs_on_cpu = False

    @classmethod
    def available(cls):
        from edgecv.runtime.tensorrt.compat import trt_available

        return trt_available()

    @classmethod
    def precisions(cls, bundle) -> List[str]:
        """int8 from the Q/DQ ONNX; int8 from the calibration cache where TensorRT still has calibrators
        (<= 10.x); fp16 where the builder has the FP16 flag (<= 10.x); fp32."""
        from edgecv.runtime.tensorrt.compat import has_calibrators, has_precision_flags

        out = ["int8"] if any(a["target"] == cls.name and a["precision"] == "int8"
                              for a in bundle.manifest["artifacts"]) else []
        if bundle.manifest.get("calibration_cache") and has_calibrators():
            out.append("int8-calib")
        if has_precision_flags():
            out.append("fp16")
        return out + ["fp32"]

    @classmethod
    def for_bundle(cls, bundle, precision: Optional[str] = None, threads: Optional[int] = None,
                   dla_core: int = -1, **kw):
        """The cached engine for the bundle's TensorRT artefact (built on first use on this device); the
        engine's optimisation profile sets the largest batch ``infer`` takes."""
        from edgecv.runtime.tensorrt.engine_build import engine_for_bundle

        engine_path, key = engine_for_bundle(bundle, precision=precision or bundle.artifact(cls.name)["precision"],
                                             dla_core=dla_core)
        be = cls(engine_path, **kw)
        return be, {"backend": cls.name, "file": str(engine_path), "precision": key.precision, "bundle": bundle}

    def __init__(self, engine_path: str | Path, mem: Optional[CudaMem] = None, cuda_graph: bool = False,
                 max_batch: Optional[int] = None):
        trt = import_tensorrt()
        if trt is None:
            raise DeviceError("TensorRT is not installed")
        self.trt = trt
        self.mem = mem or open_cuda_mem()
        self.logger = trt.Logger(trt.Logger.WARNING)
        with self.mem.activate():
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise DeviceError(f"{engine_path}: TensorRT could not deserialize the engine")
            self.context = self.engine.create_execution_context()
        self._in: List[TensorSpec] = []
        self._out: List[TensorSpec] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            shape = tuple(self.engine.get_tensor_shape(name))
            spec = TensorSpec(name, shape, dtype)
            (self._in if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self._out).append(spec)
        inp = self._in[0]
        self.max_batch = max_batch or (self.engine.get_tensor_profile_shape(inp.name, 0)[2][0]
                                       if inp.shape[0] == -1 else inp.shape[0])
        full = lambda s: (self.max_batch,) + tuple(s.shape[1:])  # noqa: E731
        self.host = {s.name: self.mem.pinned(full(s), s.dtype) for s in self._in + self._out}
        self.dev = {s.name: self.mem.device_alloc(self.host[s.name].nbytes) for s in self._in + self._out}
        for name, ptr in self.dev.items():
            self.context.set_tensor_address(name, ptr)
        self.cuda_graph = cuda_graph and hasattr(self.mem, "capture_graph")
        self._graphs: Dict[tuple, object] = {}
        self._closers: List = []  # GPU preprocessors: their modules unload before the context goes

    @property
    def inputs(self) -> List[TensorSpec]:
        return self._in

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._out

    def _enqueue(self, n: int, copy_input: bool = True) -> None:
        inp, out = self._in[0].name, self._out[0].name
        if copy_input:  # False: the GPU preprocessing kernel already wrote the device input on this stream
            self.mem.htod_async(self.dev[inp], self.host[inp][:n])
        if not self.context.execute_async_v3(self.mem.stream_handle):
            raise DeviceError("TensorRT execute_async_v3 failed")
        self.mem.dtoh_async(self.host[out][:n], self.dev[out])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_input(batch)
        n = batch.shape[0]
        if n > self.max_batch:
            raise DeviceError(f"batch {n} > the engine's max batch {self.max_batch}")
        inp = self._in[0].name
        with self.mem.activate():
            if batch.ctypes.data != self.host[inp].ctypes.data:  # not filled in place (input_buffer)
                self.host[inp][:n] = batch
            return self._run(n, copy_input=True)

    def _run(self, n: int, copy_input: bool) -> np.ndarray:
        inp, out = self._in[0].name, self._out[0].name
        self.context.set_input_shape(inp, (n,) + tuple(self.host[inp].shape[1:]))
        if self.cuda_graph:
            key = (n, copy_input)
            if key not in self._graphs:
                self._enqueue(n, copy_input)  # one plain run first: TensorRT allocates lazily on the first enqueue
                self.mem.synchronize()
                self._graphs[key] = self.mem.capture_graph(lambda: self._enqueue(n, copy_input))
            self.mem.launch_graph(self._graphs[key])
        else:
            self._enqueue(n, copy_input)
        self.mem.synchronize()
        return self.host[out][:n].copy()

    def gpu_preprocessor(self, pre):
        """NVRTC-compiled resize/crop/normalise into the engine's device input (edgecv.runtime.tensorrt.gpu_preprocess);
        None without cuda-python, or when the engine's input is not float32 NCHW of the preprocessing's size."""
        from edgecv.runtime.tensorrt.gpu_preprocess import GpuPreprocessor, gpu_preprocess_available

        spec = self._in[0]
        if not gpu_preprocess_available()[0] or np.dtype(spec.dtype) != np.float32 or \
                tuple(self.host[spec.name].shape[1:]) != (pre.channels, pre.crop, pre.crop):
            return None
        with self.mem.activate():
            gp = GpuPreprocessor(pre, self.mem, self.dev[spec.name], self.max_batch)
        self._closers.append(gp.close)

        def run(frame, row=0):
            with self.mem.activate():
                gp(frame, row)
        return run

    def infer_device(self, n: int) -> np.ndarray:
        if not 1 <= n <= self.max_batch:
            raise DeviceError(f"batch {n} is outside 1..{self.max_batch} (the engine's max batch)")
        with self.mem.activate():
            return self._run(n, copy_input=False)

    def input_buffer(self, n: int = 1) -> np.ndarray:
        """A view of the page-locked input staging buffer: filled in place, ``infer`` skips its host copy."""
        if n > self.max_batch:
            raise DeviceError(f"batch {n} > the engine's max batch {self.max_batch}")
        return self.host[self._in[0].name][:n]

    def profile_layers(self, batch: np.ndarray, iters: int = 50) -> Dict:
        """Per-layer ms of each of ``iters`` runs (IProfiler), and the engine inspector's layer information."""
        prof = make_layer_profiler(self.trt)
        self.context.profiler = prof
        try:
            for _ in range(iters):
                self.infer(batch)
        finally:
            self.context.profiler = None
        return {"layers": {k: v[-iters:] for k, v in prof.times.items()}, "ops": {}, "run_ms": None, "run_pairs": None,
                "files": {"engine_layers.json": self.engine_layers()}}

    def engine_layers(self) -> str:
        """Layer information (JSON) from the engine inspector; the lean runtime does not bind the inspector."""
        if not hasattr(self.trt, "EngineInspector"):
            return json.dumps({"unavailable": f"TensorRT {self.trt.__version__} ({self.trt.__name__}) has no "
                                              "EngineInspector binding"})
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)

    def close(self) -> None:
        with self.mem.activate():
            for fn in getattr(self, "_closers", []):
                fn()
        self._closers = []
        self.context = self.engine = self.runtime = None
        self.mem.close()
