"""ONNX Runtime backend: CPU now; CUDA / TensorRT execution providers when the install has them."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgecv.errors import ModelFileError
from edgecv.runtime.backends.base import OnnxFileBackend, TensorSpec, require_one_image_input
from edgecv.utils.io import read_small, utf8_safe
from edgecv.utils.limits import check_threads

# ONNX Runtime quantizes the weight of a float Conv/Gemm that sits between DequantizeLinear and QuantizeLinear
# (activations in between included), per tensor, at session creation: its "WeightBiasQuantization" transformer
# (microsoft/onnxruntime#22969, widened in #25673). That is exactly a layer the export's
# fallback keeps in float, and per-tensor int8 ruins depthwise kernels: on EfficientNet-Lite0 with its 16
# depthwise convolutions kept float, agreement with fp32 fell from 98% to 91% (mean |logit error| 0.075 -> 0.32).
# A layer edgecv keeps float must run in float.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]

# On an x86 CPU without VNNI (AVX2 or AVX-512 alone: AMD Zen 2/3, Intel before Cascade Lake and Ice Lake), ONNX
# Runtime's u8 x s8 int8 kernels add pairs of products in 16 bits, which saturate: EfficientNet-Lite0's int8 then
# disagreed with fp32 on 12% of ImageNet photographs (mean KL 0.199; 0.0065 computed exactly) on a Zen 3 EPYC
# (tools/int8_saturation.py). This option makes ONNX Runtime widen those products to 16 bits where a weight lies
# outside [-64, 63] (microsoft/onnxruntime#12088). On a CPU with VNNI or AMX it changes no answer but costs speed (a
# Zen 4 EPYC: Lite0's int8 ran 2.0x slower with it, bit-identical: it switches to the slower u8 x u8 kernels on
# any AVX2/AVX-512 CPU, VNNI or not), so it is set only where sums saturate, or where the flags cannot be read.
X64_QUANT_PRECISION = ("session.x64quantprecision", "1")


def widen_int8_sums() -> bool:
    """Whether sessions set :data:`X64_QUANT_PRECISION`: on an x86 CPU without VNNI or AMX, and where
    /proc/cpuinfo shows no flags (elsewhere than Linux, where it is the safe choice; on Arm it does nothing:
    ONNX Runtime's onnxruntime_session_options_config_keys.h says it acts on x86 SSE4.1/AVX2/AVX-512 only)."""
    from edgecv.runtime.backends.cpu import cpu_flags, int8_sums_saturate

    flags = cpu_flags()
    return not flags or int8_sums_saturate(flags)


def session_options(threads: Optional[int] = None, profile_prefix: Optional[str] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if check_threads(threads, "threads"):
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if widen_int8_sums():
        so.add_session_config_entry(*X64_QUANT_PRECISION)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def default_providers(preferred: Sequence[str] = ("CUDAExecutionProvider",)) -> List[str]:
    """CUDA first where the install has it (onnxruntime-gpu on a Jetson), then the CPU. TensorRT's execution
    provider is left out of the default: it builds an engine inside every session creation; edgecv's own
    TensorRT target builds once and caches."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in preferred if p in avail] + ["CPUExecutionProvider"]


def ort_version() -> Optional[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return ort.__version__


class OrtBackend(OnnxFileBackend):
    """One ``InferenceSession``; input checked against the model's spec before every run."""

    name = "onnxruntime"

    def __init__(self, model_path: str, threads: Optional[int] = None, providers: Optional[List[str]] = None,
                 profile_prefix: Optional[str] = None):
        import onnxruntime as ort

        self.path = str(model_path)
        try:
            # ONNX Runtime's path argument must be UTF-8: a model under a non-UTF-8 folder is passed as bytes (a
            # protobuf holds at most 2 GiB, so nothing larger is read)
            model = self.path if utf8_safe(self.path) else read_small(self.path, 2 << 30)
            self.session = ort.InferenceSession(model, sess_options=session_options(threads, profile_prefix),
                                                providers=providers or default_providers(),
                                                disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as e:  # ORT raises its own types (InvalidProtobuf, Fail, ...) for a bad model file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({msg[:300]})") from None
        require_one_image_input(self.path, [(i.name, i.type) for i in self.session.get_inputs()])
        i = self.session.get_inputs()[0]
        self._input = TensorSpec(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape), np.float32)
        self._outputs = [TensorSpec(o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape), np.float32)
                         for o in self.session.get_outputs()]
        self._names = [o.name for o in self._outputs]
        self.threads = threads
        self.runs_on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        self._last_input: Optional[np.ndarray] = None
        self._bound: Optional[tuple] = None  # (input array, its shape, IOBinding, output array, OrtValues)

    @property
    def inputs(self) -> List[TensorSpec]:
        return [self._input]

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._outputs

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The first output for ``batch``; a fresh array the caller may keep.

        A caller that passes the same buffer again (the camera loop refills one input buffer in place; bench
        and profile repeat one batch) gets that buffer bound with IOBinding: ONNX Runtime reads it where it
        is and writes into a preallocated output, 0.05 ms less per Lite0 frame than ``session.run``.
        """
        self.check_input(batch)
        b = self._bound
        if b is None or b[0] is not batch or b[1] != batch.shape:
            if batch is self._last_input and self._bind(batch):
                b = self._bound
            else:
                self._last_input = batch
                return self.session.run(self._names, {self._input.name: batch})[0]
        self.session.run_with_iobinding(b[2])
        return b[3].copy()

    def _bind(self, batch: np.ndarray) -> bool:
        import onnxruntime as ort

        out_shape = (batch.shape[0],) + self._outputs[0].shape[1:]
        # an output of unknown or no rank has no batch dimension to size a buffer by: run it unbound
        if (not batch.flags.c_contiguous or -1 in out_shape or not self._outputs[0].shape
                or self.session.get_outputs()[0].type != "tensor(float)"):
            return False
        out = np.empty(out_shape, np.float32)
        # The OrtValues share memory with the numpy arrays (CPU); both are kept alive in self._bound.
        values = (ort.OrtValue.ortvalue_from_numpy(batch), ort.OrtValue.ortvalue_from_numpy(out))
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self._input.name, values[0])
        binding.bind_ortvalue_output(self._names[0], values[1])
        self._bound = (batch, batch.shape, binding, out, values)
        return True

    def profile_layers(self, batch: np.ndarray, iters: int) -> Dict:
        """ONNX Runtime's profiler on a second session of the same model: per-node kernel times of each run,
        and model_run from the same trace (the same profiler overhead on both sides of the sum check)."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgecv-prof-") as tmp:  # removed even on Ctrl-C
            prof = OrtBackend(self.path, threads=self.threads, profile_prefix=os.path.join(tmp, "ort"),
                              providers=self.session.get_providers())
            try:
                for _ in range(iters):
                    prof.session.run(prof._names, {prof._input.name: batch})
            finally:
                trace = prof.end_profiling()
                with open(trace) as f:
                    events = json.load(f)
                prof.close()
        nodes: Dict[str, List[float]] = {}
        ops: Dict[str, str] = {}
        runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-iters:]
        kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        for e in kernels:
            name = e["name"][: -len("_kernel_time")]
            nodes.setdefault(name, []).append(e["dur"] / 1000.0)
            ops[name] = e.get("args", {}).get("op_name", "")
        return {"layers": {k: v[-iters:] for k, v in nodes.items()}, "ops": ops,
                "run_ms": float(np.mean([r["dur"] for r in runs])) / 1000.0 if runs else None,
                "run_pairs": _run_pairs(runs, kernels) or None, "files": {}}

    def run_unchecked(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._names, {self._input.name: batch})[0]

    def end_profiling(self) -> str:
        return self.session.end_profiling()

    def close(self) -> None:
        self.session = self._bound = self._last_input = None


def _run_pairs(runs: List[dict], kernels: List[dict]) -> List[Tuple[float, float]]:
    """(kernel ms summed, model_run ms) of each run: a kernel belongs to the run whose span holds its start."""
    starts = np.array([k["ts"] for k in kernels], dtype=np.int64)
    durs = np.array([k["dur"] for k in kernels], dtype=np.float64)
    order = np.argsort(starts, kind="stable")
    starts, durs = starts[order], durs[order]
    pairs = []
    for r in runs:
        lo, hi = np.searchsorted(starts, [r["ts"], r["ts"] + r["dur"]], side="left")
        pairs.append((float(durs[lo:hi].sum()) / 1000.0, r["dur"] / 1000.0))
    return pairs
