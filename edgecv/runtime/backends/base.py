"""The one small interface every inference backend implements: load, specs, infer a batch, close."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgecv.errors import InputSpecError, ModelFileError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def require_one_image_input(path: str, inputs: Sequence[Tuple[str, str]]) -> None:
    """ModelFileError naming ``path`` unless the model takes one float32 tensor (``inputs``: each input's name and
    element type as the runtime names it), the image batch every backend feeds: a second input was ONNX Runtime's
    'Required inputs are missing' on the first run, an integer one its 'Unexpected input data type'."""
    if len(inputs) == 1 and inputs[0][1] in ("float32", "tensor(float)", "f32"):
        return
    listed = ", ".join(f"{n} ({t})" for n, t in inputs) or "none"
    raise ModelFileError(f"{path}: takes {len(inputs)} input(s): {listed}; edgecv runs image classifiers, with one "
                         "float32 image input")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[int, ...]  # -1 for a dynamic dimension
    dtype: type

    def describe(self) -> str:
        dims = ",".join("N" if d == -1 else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"

    def batch_shape(self, batch: int, dims: Optional[Tuple[int, ...]] = None) -> Tuple[int, ...]:
        """The shape of ``batch`` inputs for timing: the model's own dimensions after the batch, with ``dims``
        (``--shape``, as trtexec's ``--shapes``) filling dynamic ones. InputSpecError when one stays dynamic or
        empty, ``dims`` contradicts a fixed one, or one input is over the frame budget (three channels of
        MAX_PIXELS) or the batch over the memory available: a model declaring 1x3x40000x40000 asked numpy for
        36 GB, and a dynamic H x W for a negative size."""
        from edgecv.utils.limits import MAX_PIXELS, available_memory

        own = tuple(self.shape[1:])
        if dims is not None:
            text = "x".join(map(str, dims))
            if len(dims) != len(own):
                raise InputSpecError(f"--shape {text}: {len(dims)} dimension(s), but {self.describe()} has "
                                     f"{len(own)} after the batch")
            fixed = [i for i, (d, g) in enumerate(zip(own, dims)) if d > 0 and d != g]
            if fixed:
                raise InputSpecError(f"--shape {text}: {self.describe()} is fixed at {own[fixed[0]]} in dimension "
                                     f"{fixed[0] + 1} after the batch")
            own = tuple(dims)
        if any(d < 1 for d in own):
            raise InputSpecError(f"{self.describe()}: dynamic or empty dimensions after the batch; give them with "
                                 "--shape, e.g. --shape 3x224x224")
        per_input = math.prod(own)  # Python's ints: numpy's int64 product wrapped negative for 3x1e11x1e8
        if per_input > 3 * MAX_PIXELS:
            raise InputSpecError(f"{self.describe()}: {per_input:,} values per input, over the frame budget "
                                 f"({3 * MAX_PIXELS:,}: {MAX_PIXELS / 1e6:.0f} megapixels x 3 channels)")
        need, free = 2 * batch * per_input * np.dtype(np.float32).itemsize, available_memory()
        if free is not None and need > free:
            raise InputSpecError(f"{self.describe()}: a batch of {batch} needs {need / 2**30:.1f} GiB, more than the "
                                 f"{free / 2**30:.1f} GiB available; lower --batch")
        return (batch,) + own


class Backend:
    """One model loaded for inference. A backend class also says, as class methods, whether it can run here
    (``available``) and how it opens a bundle's artefact (``for_bundle``) or a bare model file (``for_file``);
    edgecv.targets names the class for each deploy target."""

    name = "backend"
    runs_on_cpu = True  # inference competes with decoding and preprocessing for the same cores
    max_batch: Optional[int] = None  # the largest batch ``infer`` takes (None: any)

    @classmethod
    def precisions(cls, bundle) -> List[str]:
        """The precisions this backend can run for ``bundle``, most compressed first (what verify tries)."""
        order = {"int8": 0, "fp16": 1, "fp32": 2}
        found = {a["precision"] for a in bundle.manifest["artifacts"] if a["target"] == cls.name}
        return sorted(found, key=lambda p: (order.get(p, 3), p))

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        """(True, "") when this backend can run on this machine, else (False, what is missing)."""
        return True, ""

    @classmethod
    def for_bundle(cls, bundle, precision: Optional[str] = None, threads: Optional[int] = None,
                   **kw) -> Tuple["Backend", dict]:
        """Open the bundle's artefact for this backend: ``(backend, info)`` with info's file and precision."""
        raise NotImplementedError

    @classmethod
    def for_file(cls, path: str, threads: Optional[int] = None, dla_core: int = -1, **kw) -> Tuple["Backend", dict]:
        from edgecv.errors import DeviceError

        raise DeviceError(f"{path}: {cls.name} runs bundles only, not a bare model file; export a bundle")

    @classmethod
    def reject_dla(cls, dla_core: int) -> None:
        """For backends that are not TensorRT: ``--dla`` names a TensorRT engine and is an error here."""
        if dla_core >= 0:
            from edgecv.errors import DeviceError

            raise DeviceError(f"--dla {dla_core}: DLA cores run TensorRT engines, not {cls.name}")

    def profile_layers(self, batch: np.ndarray, iters: int) -> Dict:
        """Per-layer times over ``iters`` runs of ``batch``: ``{"layers": {name: [ms per run]}, "ops": {name:
        op type}, "run_ms": mean end-to-end ms in the same trace or None, "run_pairs": [(the layers' ms summed,
        end-to-end ms) of each run in the same trace] or None, "files": {name: text}}``."""
        from edgecv.errors import DeviceError

        raise DeviceError(f"{self.name}: no per-layer profiler")

    @property
    def inputs(self) -> List[TensorSpec]:
        raise NotImplementedError

    @property
    def outputs(self) -> List[TensorSpec]:
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def input_buffer(self, n: int = 1) -> Optional[np.ndarray]:
        """A batch-``n`` input array to fill in place and pass to ``infer`` again and again.

        Backends hand out memory they can read without a copy: TensorRT its page-locked staging buffer,
        ONNX Runtime an array it binds in place after the first call. None when the spec is dynamic
        beyond the batch dimension.
        """
        spec = self.inputs[0]
        if any(d == -1 for d in spec.shape[1:]):
            return None
        return np.empty((n,) + tuple(spec.shape[1:]), spec.dtype)

    def gpu_preprocessor(self, pre) -> Optional[Callable]:
        """A callable ``(frame, row)`` that preprocesses a decoded frame on the GPU straight into batch row
        ``row`` of this backend's device input, for :meth:`infer_device`; None where the input is not on a CUDA
        device (every CPU runtime) or cuda-python is missing."""
        return None

    def infer_device(self, n: int) -> np.ndarray:
        """Run the first ``n`` rows of the device input that :meth:`gpu_preprocessor` filled."""
        from edgecv.errors import DeviceError

        raise DeviceError(f"{self.name}: the input is not on a GPU")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_input(self, batch: np.ndarray) -> None:
        """Clear error naming the expected spec for a wrong dtype, rank, channel count or size."""
        spec = self.inputs[0]
        if not isinstance(batch, np.ndarray):
            raise InputSpecError(f"input must be a numpy array; expected {spec.describe()}")
        if batch.dtype != np.dtype(spec.dtype):
            raise InputSpecError(f"input dtype {batch.dtype} != expected {spec.describe()}")
        if batch.ndim != len(spec.shape):
            raise InputSpecError(f"input shape {batch.shape} has rank {batch.ndim}; expected {spec.describe()}")
        for axis, (got, want) in enumerate(zip(batch.shape, spec.shape)):
            if want != -1 and got != want:
                what = "channel count" if axis == 1 else f"dimension {axis}"
                raise InputSpecError(f"input {what} {got} != {want}: got shape {batch.shape}, expected {spec.describe()}")


class OnnxFileBackend(Backend):
    """A backend that runs a bundle's ONNX file as it is (the CPU runtimes): ``for_bundle`` opens the artefact's
    file, ``for_file`` a bare ``.onnx``; neither has a DLA core."""

    @classmethod
    def for_file(cls, path: str, threads: Optional[int] = None, dla_core: int = -1, **kw):
        cls.reject_dla(dla_core)
        return cls(str(path), threads=threads, **kw), {"backend": cls.name, "file": str(path), "precision": "?"}

    @classmethod
    def for_bundle(cls, bundle, precision: Optional[str] = None, threads: Optional[int] = None, dla_core: int = -1,
                   **kw):
        cls.reject_dla(dla_core)
        art = bundle.artifact(cls.name, precision)
        be = cls(str(bundle.path(art["file"])), threads=threads, **kw)
        return be, {"backend": cls.name, "file": art["file"], "precision": art["precision"], "bundle": bundle}
