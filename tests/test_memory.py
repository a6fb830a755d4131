"""keep_freed_memory: inside it, a large allocation comes from the heap and stays there when freed (glibc gives each
allocation above 32 MB a fresh mmap, returned to the kernel on free, so a loop making the same large tensors every
step page-faults on all of them every step); outside it, the defaults hold."""
import ctypes
import platform

import numpy as np
import pytest

from edgecv.utils.memory import keep_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _info() -> _Mallinfo2:
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _Mallinfo2
    return libc.mallinfo2()


MB64 = 64 * 1024 * 1024


def _mapped_by_an_allocation() -> int:
    """The bytes mmapped outside the heap that a live 64 MB array adds."""
    before = _info().hblkhd
    a = np.ones(MB64 // 8)
    during = _info().hblkhd
    del a
    return during - before


def test_large_allocations_come_from_the_heap_and_stay_there_only_inside():
    mapped = _mapped_by_an_allocation()
    assert mapped >= MB64  # glibc's default: a fresh mmap
    with keep_freed_memory() as took:
        mapped_in = _mapped_by_an_allocation()
        free_kept = _info().fordblks
    assert took is True and mapped_in == 0 and free_kept >= MB64, (mapped_in, free_kept)
    mapped_after = _mapped_by_an_allocation()
    assert mapped_after >= MB64  # the defaults are back


def test_a_nested_block_does_not_end_the_outer_one():
    """An evaluation inside a training loop, both kept: the inner block's end must not restore glibc's defaults
    while the outer loop still runs."""
    with keep_freed_memory():
        with keep_freed_memory():
            pass
        mapped_after_inner = _mapped_by_an_allocation()
    assert mapped_after_inner == 0
    assert _mapped_by_an_allocation() >= MB64  # the outer block's end restores them


def test_training_and_evaluation_loops_run_with_freed_memory_kept():
    """edgecv.train.engine's loops (training, distillation, their evaluations) hold it for the whole loop: the
    Caltech training spent 24% of its CPU time page-faulting its activations back in without it."""
    import torch

    from edgecv.train.engine import Step, evaluate, train_one_epoch

    class Probe(torch.nn.Linear):
        mapped: list = []

        def forward(self, x):
            Probe.mapped.append(_mapped_by_an_allocation())  # at every step of the loop
            return super().forward(x)

    model = Probe(4, 3)
    data = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    train_one_epoch(model, data, Step(torch.optim.SGD(model.parameters(), lr=0.1)), 0, show_progress=False)
    evaluate(model, data, show_progress=False)
    assert Probe.mapped == [0] * 6, Probe.mapped  # 3 training steps, then 3 evaluation batches
    assert _mapped_by_an_allocation() >= MB64  # and glibc's defaults once the loops are done


def test_the_head_phase_caches_features_with_freed_memory_kept():
    """The head phase's pass over every image (edgecv.train.loop._features), in its own loop: after the engine's loops
    kept memory, the Caltech training still spent 27% of its CPU time in the kernel, mostly there."""
    import torch

    from edgecv.train.loop import _features

    class Probe(torch.nn.Module):
        mapped: list = []

        def forward(self, x):
            Probe.mapped.append(_mapped_by_an_allocation())
            return x

    model = torch.nn.Sequential(Probe(), torch.nn.Linear(4, 3))
    data = [(torch.randn(4), 0) for _ in range(6)]
    fx, fy = _features(model, data, batch=2, desc="features", show_progress=False)
    assert Probe.mapped == [0] * 3, Probe.mapped  # 3 batches of 2
    assert fx.shape == (6, 4) and fy.tolist() == [0] * 6  # the features before the head, which is put back
    assert isinstance(model[1], torch.nn.Linear)
    assert _mapped_by_an_allocation() >= MB64


def test_pruning_by_reconstruction_runs_with_freed_memory_kept():
    """prune_hidden's passes over the refit images (edgecv.compress.reconstruct): the Caltech Lite0 at 0.3 took
    24-28 s with glibc's defaults, most of it page faults, and 14 s with freed memory kept."""
    import torch
    from torchvision.models import mobilenet_v2

    from edgecv.compress.reconstruct import prune_hidden

    torch.manual_seed(0)
    m = mobilenet_v2(num_classes=10).eval()
    mapped = []
    m.features[0].register_forward_hook(lambda *_: mapped.append(_mapped_by_an_allocation()))
    prune_hidden(m, torch.randn(8, 3, 32, 32).numpy(), 0.5, round_to=8, show_progress=False)
    assert len(mapped) > 1 and set(mapped) == {0}, mapped  # the teacher's pass and every unit's capture
    assert _mapped_by_an_allocation() >= MB64
