"""bench and profile on any ONNX file, as trtexec is used: dynamic input dimensions filled by --shape, inputs
that cannot be timed refused in one line, outputs without a batch dimension; and the runtimes' thread ceiling."""
import json
import os

import numpy as np
import pytest
from test_bad_input import invoke, one_line_error

from edgecv.bundle.reader import open_bundle


def test_a_runtime_opened_from_python_refuses_a_thread_count_past_the_ceiling(tiny_bundle):
    """The CLI's ranges and the runtimes read one ceiling (edgecv.utils.limits.MAX_THREADS)."""
    from edgecv.runtime.backends.openvino import OpenVinoBackend
    from edgecv.runtime.backends.ort import OrtBackend

    fp32 = str(open_bundle(tiny_bundle).path("model_fp32.onnx"))
    for cls in (OrtBackend, OpenVinoBackend):
        with pytest.raises(ValueError, match="threads: expected a thread count from 1 to 256, got 100000"):
            cls(fp32, threads=100000)
        be = cls(fp32, threads=256)  # the ceiling itself opens and answers
        assert be.infer(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
        be.close()


def _onnx_file(path, in_dims, out_dims=None, conv=False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, in_dims)
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, out_dims)
    if conv:  # a 7x7 kernel without padding: no output below 7x7
        nodes, inits = [helper.make_node("Conv", ["input", "w"], ["out"])], [
            numpy_helper.from_array(np.ones((4, 3, 7, 7), np.float32), "w")]
    else:
        nodes, inits = [helper.make_node("ReduceMean", ["input"], ["out"], keepdims=0)], []
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize("cmd", ["bench", "profile"])
def test_bench_and_profile_take_a_shape_for_dynamic_inputs_and_refuse_one_they_cannot_time(cmd, tmp_path):
    """A dynamic H x W made numpy build a negative size, a model declaring 1x3x40000x40000 asked it for 36 GB, and a
    shape the network cannot run was the runtime's traceback: each is one line now, and --shape (trtexec's
    --shapes) fills the dynamic dimensions."""
    dyn = _onnx_file(tmp_path / "dyn.onnx", ["N", 3, "H", "W"], ["N", 4, "h", "w"], conv=True)
    cases = [
        ([dyn], "input: float32[N,3,N,N]: dynamic or empty dimensions after the batch; give them with --shape"),
        ([_onnx_file(tmp_path / "zero.onnx", [1, 3, 0, 224])], "float32[1,3,0,224]: dynamic or empty dimensions"),
        ([_onnx_file(tmp_path / "huge.onnx", [1, 3, 40000, 40000])],
         "4,800,000,000 values per input, over the frame budget"),
        ([dyn, "--shape", "3x99999999999x99999999"], "values per input, over the frame budget"),  # past int64
        ([dyn, "--shape", "3x32"], "--shape 3x32: 2 dimension(s), but input: float32[N,3,N,N] has 3 after the batch"),
        ([dyn, "--shape", "4x32x32"], "--shape 4x32x32: input: float32[N,3,N,N] is fixed at 3 in dimension 1"),
        ([dyn, "--shape", "3x3x3"], "dyn.onnx: cannot run on an input of shape 1x3x3x3 ("),
        ([dyn, "--shape", "3x0x9"], "'3x0x9': every dimension must be >= 1"),
    ]
    for args, needle in cases:
        one_line_error(invoke(cmd, *args, "--iters", "2"), 2, needle)
    r = invoke(cmd, dyn, "--shape", "3x16x16", "--iters", "2", "--json")
    assert r.exit_code == 0, r.output
    if cmd == "bench":
        assert list(json.loads(r.output)["batches"]) == ["1"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_model_that_is_not_one_float_image_input_is_refused_when_opened(backend, tmp_path):
    """A second input was ONNX Runtime's 'Required inputs (['b']) are missing' on the first timed run, an integer
    input its 'Unexpected input data type': edgecv runs image classifiers, and says so when the file is opened,
    for bench, profile and every other path through the backend."""
    import onnx
    from onnx import TensorProto, helper

    def model(path, inputs, op):
        vi = [helper.make_tensor_value_info(n, t, [1, 4]) for n, t in inputs]
        out = helper.make_tensor_value_info("y", inputs[0][1], [1, 4])
        g = helper.make_graph([helper.make_node(op, [n for n, _ in inputs], ["y"])], "g", vi, [out])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    two = model(tmp_path / "two.onnx", [("a", TensorProto.FLOAT), ("b", TensorProto.FLOAT)], "Add")
    ints = model(tmp_path / "ints.onnx", [("ids", TensorProto.INT64)], "Identity")
    for cmd in ("bench", "profile"):
        one_line_error(invoke(cmd, two, "--backend", backend), 2, "two.onnx: takes 2 input(s): a (")
        one_line_error(invoke(cmd, ints, "--backend", backend), 2,
                       "ints.onnx: takes 1 input(s): ids (")
    r = invoke("bench", ints, "--backend", backend)
    assert "edgecv runs image classifiers, with one float32 image input" in r.output


def test_bench_runs_a_model_whose_output_has_no_batch_dimension(tmp_path):
    """ONNX Runtime's bound output buffer was sized (batch, ...) from the declared output: a scalar output at batch 2
    failed inside ONNX Runtime."""
    f = _onnx_file(tmp_path / "scalar.onnx", ["N", 3, 8, 8])
    r = invoke("bench", f, "--batch", "1,2", "--iters", "3", "--json")
    assert r.exit_code == 0 and set(json.loads(r.output)["batches"]) == {"1", "2"}, r.output


def test_a_fifo_or_device_named_like_a_model_is_refused_not_waited_on(tmp_path):
    """ONNX Runtime opened a FIFO named x.onnx in C++ and waited for a writer; SIGTERM could not stop it."""
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    for cmd in ("bench", "profile"):
        one_line_error(invoke(cmd, fifo), 2, f"{fifo}: not an .onnx file (a device, pipe or socket)")
    os.mkfifo(tmp_path / "model.pt")
    one_line_error(invoke("eval", tmp_path / "model.pt", "--data", tmp_path), 2,
                   "not a checkpoint file (a device, pipe or socket)")


def test_an_onnx_file_given_where_a_recipe_or_checkpoint_belongs_says_to_give_its_bundle(tiny_bundle, tmp_path):
    """It read as "not a PyTorch checkpoint (Unsupported operand 8)"."""
    onnx_file = open_bundle(tiny_bundle).path("model_fp32.onnx")
    for cmd in (["eval", onnx_file, "--data", tmp_path], ["export", onnx_file, "-o", tmp_path / "o"],
                ["explain", onnx_file, tmp_path, "-o", tmp_path / "x"]):
        one_line_error(invoke(*cmd), 2, "an ONNX file carries no labels or preprocessing of its own: give the bundle")

