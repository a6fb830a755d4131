"""The registry of deploy targets: the one place that names them (standard library only, importable anywhere).

A target is a runtime a bundle can be deployed to. Everything that differs between targets is declared here,
and every layer derives from it: CLI choices, recipe validation, the export loop (quantization settings,
file names, steps after quantizing, whether latency can be measured on the export host), backend selection
(``auto`` order, availability), ``profile`` and the run loop (through the backend class it names).

Adding a target is one backend module (a :class:`edgecv.runtime.backends.base.Backend` subclass with the class
methods ``available``, ``for_bundle`` and, if it runs bare ``.onnx`` files, ``for_file``) plus one
:func:`register` call. Only this module and the modules a target lists in ``modules`` may spell its name.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Target:
    name: str
    file_tag: str  # names the int8 artefact (edgecv.bundle.names.int8_model)
    backend: str  # "module:Class", imported when first used
    # ONNX Runtime quantizer settings for this target's int8 Q/DQ model
    quant: Dict[str, Any] = field(default_factory=dict)
    host_latency: bool = False  # its latency on the export host is its latency on the device (choose by speed)
    # "module:function"(model proto, bundle dir, file name, calibration) after quantizing
    post_quantize: Tuple[str, ...] = ()
    checker: Optional[str] = None  # "module:function"(model proto, name) -> CheckResult, for ``edgecv check``
    version: Optional[str] = None  # "module:function"() -> version string or None, for the manifest
    priority: int = 0  # ``--backend auto`` tries available targets from the highest priority down
    modules: Tuple[str, ...] = ()  # the modules that implement this target (they may name it)
    description: str = ""

    def backend_class(self):
        return load(self.backend)


_REGISTRY: Dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add a target; registering a name twice is an error (two modules would claim it)."""
    if target.name in _REGISTRY and _REGISTRY[target.name] != target:
        raise ValueError(f"target {target.name!r} is already registered")
    _REGISTRY[target.name] = target
    return target


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> List[str]:
    return list(_REGISTRY)


def all_targets() -> List[Target]:
    return list(_REGISTRY.values())


def get(name: str) -> Target:
    if name not in _REGISTRY:
        raise KeyError(f"unknown target {name!r} (expected one of: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def host_reference() -> Target:
    """The target whose latency the export host measures as the baseline (the first with ``host_latency``)."""
    return next(t for t in _REGISTRY.values() if t.host_latency)


def load(ref: str) -> Any:
    """``"package.module:attr"`` -> the attribute (imports lazily: no heavy import until a target is used)."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def export_check(t: Target) -> Tuple[bool, str]:
    """Whether the export host can make ``t``'s artefacts: a target with ``host_latency`` is judged (accuracy
    and speed) by running its own runtime here, so that runtime must be installed; the others are judged
    through ONNX Runtime on the export host and measured on the device."""
    if not t.host_latency:
        return True, ""
    return t.backend_class().available()


def exportable() -> Tuple[List[str], Dict[str, str]]:
    """The targets an export makes when not told which: every one the host can judge, and why others are not."""
    names_, skipped = [], {}
    for t in _REGISTRY.values():
        ok, why = export_check(t)
        if ok:
            names_.append(t.name)
        else:
            skipped[t.name] = why
    return names_, skipped


def auto_order() -> List[Target]:
    return sorted(_REGISTRY.values(), key=lambda t: -t.priority)


def first_available(check: Callable[[Target], Tuple[bool, str]]) -> Tuple[Target, List[str]]:
    """The highest-priority target for which ``check`` says yes, and why each one before it was skipped."""
    skipped = []
    for t in auto_order():
        ok, why = check(t)
        if ok:
            return t, skipped
        skipped.append(f"{t.name}: {why}")
    raise LookupError("no target is available: " + "; ".join(skipped))


register(Target(
    name="tensorrt",
    file_tag="trt",
    backend="edgecv.runtime.tensorrt.backend:TrtBackend",
    # TensorRT explicit quantization: symmetric int8 activations and weights (zero-point 0), per-channel
    # weights on axis 0, float biases, Q/DQ pairs shared between consumers. Placement as NVIDIA Model
    # Optimizer's: Q/DQ on the inputs of weighted layers, none on their outputs (TensorRT fuses the activation
    # and the next layer's Q into the convolution; the logits stay float). On EfficientNet-Lite0's held-out
    # images: agreement with fp32 96.0% -> 97.1% (tools/modelopt_compare.py).
    quant={"activation": "int8", "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
           "DedicatedQDQPair": False, "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm", "MatMul"]},
    host_latency=False,
    post_quantize=("edgecv.export.check:require_trt_qdq", "edgecv.export.calib_cache:write_cache_for_bundle"),
    checker="edgecv.export.check:check_trt_qdq",
    version="edgecv.runtime.tensorrt.compat:trt_version",
    priority=10,
    modules=("edgecv.runtime.tensorrt.backend", "edgecv.runtime.tensorrt.compat", "edgecv.runtime.tensorrt.calibrator",
             "edgecv.runtime.tensorrt.engine_build", "edgecv.runtime.tensorrt.cuda_mem", "edgecv.export.calib_cache"),
    description="NVIDIA TensorRT (Jetson, dGPU): engine built and cached on the device from the Q/DQ ONNX",
))

register(Target(
    name="onnxruntime",
    file_tag="ort",
    backend="edgecv.runtime.backends.ort:OrtBackend",
    # U8S8: unsigned activations, symmetric signed weights, what ORT's CPU kernels run fastest.
    quant={"activation": "uint8", "WeightSymmetric": True},
    host_latency=True,
    version="edgecv.runtime.backends.ort:ort_version",
    priority=0,
    modules=("edgecv.runtime.backends.ort",),
    description="ONNX Runtime (any CPU; CUDA/TensorRT execution providers where the install has them)",
))

register(Target(
    name="openvino",
    file_tag="ov",
    backend="edgecv.runtime.backends.openvino:OpenVinoBackend",
    # U8S8 Q/DQ as for ONNX Runtime: OpenVINO's CPU plugin runs it as int8 convolutions (20% faster on
    # EfficientNet-Lite0 than symmetric int8 activations, and faster than NNCF's own placement; tools/bench_peers.py)
    quant={"activation": "uint8", "WeightSymmetric": True},
    host_latency=True,
    version="edgecv.runtime.backends.openvino:openvino_version",
    priority=0,
    modules=("edgecv.runtime.backends.openvino",),
    description="Intel OpenVINO (x86 CPUs, Intel iGPU/NPU): runs the int8 Q/DQ ONNX directly (optional extra)",
))
