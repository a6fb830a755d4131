"""OpenVINO backend (x86 CPUs in in-vehicle compute units; Intel iGPU and NPU): runs the bundle's int8 Q/DQ ONNX.

OpenVINO reads the Q/DQ ONNX directly and runs its convolutions as int8 kernels (VNNI/AMX on the CPU), so no
second model format is shipped. One compiled model per batch size with a static shape (about 10% faster than a
dynamic batch on EfficientNet-Lite0, measured), float parts held at f32 (OpenVINO may pick bf16 on CPUs with
AMX; fp32 must answer like fp32), and compiled blobs cached under ``$EDGECV_CACHE/openvino`` so a second start
skips the compilation.

**bf16** is a precision of its own where the CPU has bf16 units (AMX or AVX-512 BF16: OpenVINO's ``BF16``
capability): the fp32 artefact run with bf16 inference precision. ``edgecv verify`` measures it against the golden
vectors like every precision; it is chosen only within the budget and when faster.

The device is ``CPU`` unless ``EDGECV_OPENVINO_DEVICE`` (or ``device=``) names another (``GPU``, ``NPU``).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgecv.errors import DeviceError, ModelFileError, OutputError
from edgecv.runtime.backends.base import OnnxFileBackend, TensorSpec, require_one_image_input, usable_cores
from edgecv.utils.cache import cache_lock, writable_cache_dir
from edgecv.utils.limits import check_threads

INSTALL_HINT = "pip install 'edgecv[openvino]'"


def openvino_version() -> Optional[str]:
    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino as ov

    return ov.__version__.split("-")[0]


log = logging.getLogger("edgecv.runtime")
CACHE_NAME = "openvino"  # compiled models, under the cache root (edgecv.utils.cache)



class OpenVinoBackend(OnnxFileBackend):
    """One OpenVINO model; a static-shape compiled model and infer request per batch size seen."""

    name = "openvino"

    def __init__(self, model_path: str, threads: Optional[int] = None, device: Optional[str] = None,
                 perf_count: bool = False, cache: bool = True, precision: str = "f32"):
        import openvino as ov

        self._ov = ov  # kept: the per-frame path needs ov.Tensor
        self.path, self.precision = str(model_path), precision
        self.device = device or os.environ.get("EDGECV_OPENVINO_DEVICE", "CPU")
        self.threads = threads
        self._core = ov.Core()
        if self.device.split(".")[0] not in {d.split(".")[0] for d in self._core.available_devices}:
            raise DeviceError(f"OpenVINO device {self.device!r} is not present here "
                              f"(available: {', '.join(self._core.available_devices)})")
        try:
            self._model = self._core.read_model(self.path)
        except Exception as e:  # OpenVINO raises RuntimeError with a long multi-line text for a bad file
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{self.path}: not a model OpenVINO can read ({msg[:300]})") from None
        require_one_image_input(self.path, [(p.get_any_name(), p.get_element_type().get_type_name())
                                            for p in self._model.inputs])
        self._config = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": bool(perf_count)}
        if self.device == "CPU":
            if precision not in ("f32", "bf16"):
                raise ValueError(f"precision must be f32 or bf16, not {precision!r}")
            self._config["INFERENCE_PRECISION_HINT"] = precision
        if check_threads(threads, "threads") and self.device == "CPU":
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
            if int(threads) < usable_cores():
                # OpenVINO pins its threads from core 0 up in every process: two one-thread processes (one per
                # camera) then share core 0 while core 1 idles. Lite0 int8, 2 processes x 1 thread here: 218
                # frames/s in all pinned, 469 unpinned. A process that does not own every core lets the OS place it.
                self._config["ENABLE_CPU_PINNING"] = False
        if cache:
            try:
                self._config["CACHE_DIR"] = str(writable_cache_dir(CACHE_NAME))
            except OutputError as e:  # the cache only saves compile time: run without it
                log.warning("OpenVINO compiles without its model cache: %s", e)
        self.runs_on_cpu = self.device == "CPU"

        def spec(port) -> Tuple[int, ...]:
            return tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())

        self._input = TensorSpec(self._model.inputs[0].get_any_name(), spec(self._model.inputs[0]), np.float32)
        self._outputs = [TensorSpec(o.get_any_name(), spec(o), np.float32) for o in self._model.outputs]
        self._requests: Dict[int, object] = {}  # batch size -> InferRequest of a static-shape compiled model
        self._shared: Optional[tuple] = None  # (input array, its request) bound without a copy
        self._last_input: Optional[np.ndarray] = None

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        if importlib.util.find_spec("openvino") is None:
            return False, f"OpenVINO is not installed ({INSTALL_HINT})"
        return True, ""

    @classmethod
    def has_bf16(cls) -> bool:
        """Whether this CPU runs bf16 in hardware (AMX or AVX-512 BF16), as OpenVINO itself reports it."""
        return _cpu_has_bf16()

    @classmethod
    def precisions(cls, bundle) -> List[str]:
        """The bundle's OpenVINO artefacts, and bf16 (its fp32 artefact at bf16) where the CPU has bf16 units."""
        found = super().precisions(bundle)
        device = os.environ.get("EDGECV_OPENVINO_DEVICE", "CPU")
        if "fp32" in found and "bf16" not in found and device == "CPU" and cls.has_bf16():
            found.insert(found.index("fp32"), "bf16")
        return found

    @classmethod
    def for_bundle(cls, bundle, precision: Optional[str] = None, threads: Optional[int] = None, dla_core: int = -1,
                   **kw):
        """As every file backend; ``bf16`` (asked for, or the manifest's default) runs the fp32 artefact at bf16,
        refused where the CPU has no bf16 units."""
        cls.reject_dla(dla_core)
        if precision == "bf16" and not any(a["target"] == cls.name and a["precision"] == "bf16"
                                           for a in bundle.manifest["artifacts"]):
            art = {**bundle.artifact(cls.name, "fp32"), "precision": "bf16"}  # exported where bf16 was not measured
        else:
            art = bundle.artifact(cls.name, precision)
        if art["precision"] == "bf16" and not cls.has_bf16():
            raise DeviceError("bf16: this CPU has no bf16 units (AMX or AVX-512 BF16); run --precision fp32 or int8")
        be = cls(str(bundle.path(art["file"])), threads=threads, precision="bf16" if art["precision"] == "bf16" else "f32",
                 **kw)
        if art["precision"] == "int8" and be.device == "CPU":
            _warn_if_int8_saturates()
        return be, {"backend": cls.name, "file": art["file"], "precision": art["precision"], "bundle": bundle}

    @property
    def inputs(self) -> List[TensorSpec]:
        return [self._input]

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._outputs

    def _request(self, n: int):
        req = self._requests.get(n)
        if req is None:
            model = self._model.clone()
            model.reshape({model.inputs[0]: self._ov.PartialShape([n, *self._input.shape[1:]])})  # -1 stays dynamic
            try:
                with cache_lock(CACHE_NAME) if "CACHE_DIR" in self._config else contextlib.nullcontext():
                    compiled = self._core.compile_model(model, self.device, self._config)
            except RuntimeError as e:
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else "RuntimeError"
                raise DeviceError(f"{self.path}: OpenVINO could not compile it for {self.device} ({msg[:300]})") from None
            req = self._requests[n] = compiled.create_infer_request()
        return req

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The first output for ``batch``; a fresh array the caller may keep.

        A caller that passes the same buffer again (the camera loop refills one input buffer in place) gets it
        bound as a shared tensor: OpenVINO reads it where it is (about 5% less per Lite0 frame than a copy).
        """
        self.check_input(batch)
        s = self._shared
        if s is not None and s[0] is batch and s[1] == batch.shape:
            s[2].infer()
            return s[2].get_output_tensor(0).data.copy()
        req = self._request(batch.shape[0])
        if batch is self._last_input and batch.flags.c_contiguous:
            req.set_input_tensor(self._ov.Tensor(batch, shared_memory=True))
            self._shared = (batch, batch.shape, req)
            req.infer()
        else:
            self._last_input = batch
            req.infer({0: batch})
        return req.get_output_tensor(0).data.copy()

    def profile_layers(self, batch: np.ndarray, iters: int) -> Dict:
        """OpenVINO's performance counters on a second compiled model of the same file: per executed node (after
        OpenVINO's fusions) its real time in each run, its type and the kernel it ran (e.g. brgconv_avx512_I8)."""
        import time

        prof = OpenVinoBackend(self.path, threads=self.threads, device=self.device, perf_count=True, cache=False,
                               precision=self.precision)
        try:
            req = prof._request(batch.shape[0])
            req.infer({0: batch})  # first run: allocations, not steady state
            layers: Dict[str, List[float]] = {}
            ops: Dict[str, str] = {}
            runs: List[float] = []
            sums: List[float] = []
            for _ in range(iters):
                t0 = time.perf_counter()
                req.infer({0: batch})
                runs.append((time.perf_counter() - t0) * 1e3)
                this_run: Dict[str, float] = {}
                for p in req.profiling_info:  # every node each run (a node may skip a run: 0 ms), so runs align
                    # a name can appear more than once (a node and the reorder OpenVINO inserted for it)
                    this_run[p.node_name] = this_run.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1e3
                    ops.setdefault(p.node_name, f"{p.node_type} ({p.exec_type})")
                for name, ms in this_run.items():
                    layers.setdefault(name, []).append(ms)
                sums.append(sum(this_run.values()))
        finally:
            prof.close()
        layers = {k: v for k, v in layers.items() if any(v)}  # parameters, constants, fused-away nodes
        return {"layers": layers, "ops": ops, "run_ms": float(np.mean(runs)) if runs else None,
                "run_pairs": list(zip(sums, runs)) or None, "files": {}}

    def close(self) -> None:
        self._requests, self._shared, self._last_input = {}, None, None


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    # asked once per process: a Core loads the CPU plugin, and verify, precisions and for_bundle each ask
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def _warn_if_int8_saturates() -> None:
    from edgecv.runtime.backends.cpu import cpu_flags, int8_sums_saturate

    if int8_sums_saturate(cpu_flags()):
        log.warning("this CPU has no VNNI: OpenVINO adds its int8 products in 16 bits, which saturate (on "
                    "EfficientNet-Lite0, 12% of answers changed); `edgecv verify` judges it here, or run "
                    "--backend onnxruntime, which computes int8 exactly on this CPU")
