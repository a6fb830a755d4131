"""The export's distillation and QAT rung on a real CUDA GPU: edgecv.train.engine.training_device picks the GPU when
PyTorch sees one, both networks train there, and both are back on the CPU afterwards (the export goes on to ONNX
there). Skipped where there is no CUDA device (the development machine and CI); tools/gpu_check.sh runs it on a
lent GPU machine."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device (none on the development machine)")]


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def _data(n: int = 512, seed: int = 0):
    """``(images, labels)``: ten smooth random templates, each image one of them under noise."""
    templates = torch.nn.functional.avg_pool2d(torch.randn(10, 1, 36, 36, generator=torch.Generator().manual_seed(9)),
                                               5, 1) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return templates[y] + 0.8 * torch.randn(n, 1, 32, 32, generator=g), y


def _teacher() -> nn.Module:
    """A small CNN trained on the CPU to tell the templates apart."""
    net = _net(0).train()
    x, y = _data(1024, seed=5)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for xb, yb in _loader(x, y, True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    return net.eval()


def _loader(x, y, shuffle):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(0))


def _agreement(a: nn.Module, b: nn.Module, x) -> float:
    with torch.no_grad():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


def _distil(device: str, amp: bool):
    from edgecv.compress.distill import distill

    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # the student starts as a damaged copy of the teacher
        for p in student.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    (x, _), (held, _) = _data(), _data(256, seed=1)
    with torch.no_grad():
        y, y_held = teacher(x).argmax(1), teacher(held).argmax(1)
    before = _agreement(student, teacher, held)
    res = distill(student, teacher, _loader(x, y, True), _loader(held, y_held, False), epochs=3, lr=0.01,
                  batchnorm="frozen", amp=amp, device=device, show_progress=False)
    return student, teacher, res, before, _agreement(student, teacher, held)


def test_training_device_is_the_gpu_and_is_named():
    from edgecv.train.engine import device_name, training_device

    d = training_device()
    assert d.type == "cuda" and device_name(d).startswith("cuda:0 (") and torch.cuda.get_device_name(0) in device_name(d)


@pytest.mark.parametrize("amp, precision", [(False, "off"), (True, "float16")])
def test_distillation_on_the_gpu_learns_like_the_cpu_and_leaves_both_networks_on_the_cpu(amp, precision):
    gpu_student, gpu_teacher, res, before, after = _distil("cuda", amp)
    assert res["device"].startswith("cuda:0") and res["mixed_precision"] == precision
    for m in (gpu_student, gpu_teacher):
        assert {p.device.type for p in m.parameters()} == {"cpu"}
    assert after > before + 0.1, (before, after)
    assert all(p.requires_grad for p in gpu_teacher.parameters())
    cpu_student, _, cpu_res, _, cpu_after = _distil("cpu", False)
    # same schedule, same batches: the GPU run ends where the CPU run does, within arithmetic noise (float16's more)
    tol, agree = (0.06, 0.9) if amp else (0.03, 0.95)
    assert abs(after - cpu_after) <= tol and abs(res["top1"] - cpu_res["top1"]) <= tol, (after, cpu_after)
    assert _agreement(gpu_student, cpu_student, _data(256, seed=2)[0]) >= agree


def test_qat_on_the_gpu_pulls_the_fake_quantized_model_to_fp32_and_comes_back_to_the_cpu():
    from edgecv.compress.qat import finetune, prepare_qat, strip_fake_quant
    from edgecv.train.engine import device_of

    teacher = _teacher()
    x, held = _data()[0].numpy(), _data(256, seed=1)[0]
    q = prepare_qat(teacher, x[:256])
    seen = []

    def check(m):
        seen.append(device_of(m).type)
        with torch.no_grad():
            h = held.to(device_of(m))  # the teacher is where the student is
            return {"kl": torch.nn.functional.kl_div(m(h).log_softmax(1), teacher(h).log_softmax(1), log_target=True,
                                                     reduction="batchmean").item()}

    first = check(q)["kl"]
    res = finetune(q, teacher, x, epochs=3, lr=1e-3, batch=32, check=check, show_progress=False, device="cuda")
    assert seen[1:] == ["cuda"] * 3 and res.steps == 3 * 16
    assert res.history[-1]["kl"] < first, (first, res.history)
    for m in (q, teacher):
        assert {p.device.type for p in m.parameters()} == {"cpu"}
    plain = strip_fake_quant(q)  # what the export then writes to ONNX, on the CPU
    with torch.no_grad():
        assert np.isfinite(plain(held).numpy()).all()
