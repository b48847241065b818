"""zs_kernels.byte_count: the counters give exact, known figures on tiny kernels and ops, so a
counter that drops masks, element sizes, programs or launches fails here before it flatters a bench."""

import pytest
import torch
import triton
import triton.language as tl

from zs_kernels import byte_count
from zs_kernels.byte_count import Traffic


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr, ALSO_FIRST: tl.constexpr):
    """``dst[i] = src[i]`` over blocks of ``BLOCK`` with a masked tail; with ``ALSO_FIRST`` every
    program also loads ``src[0]`` (a re-read the unique counts must see once)."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    values = tl.load(src + offsets, mask=offsets < n)
    if ALSO_FIRST:
        values += tl.load(src) * 0
    tl.store(dst + offsets, values, mask=offsets < n)


@triton.jit
def _atomic_kernel(dst):
    tl.atomic_add(dst, 1.0)


def _count_copy(n: int, block: int, dtype: torch.dtype, also_first: bool, launches: int):
    src = torch.arange(n, dtype=dtype)
    dst = torch.zeros_like(src)

    def launch():
        for _ in range(launches):
            _copy_kernel[(triton.cdiv(n, block),)](src, dst, n, BLOCK=block, ALSO_FIRST=also_first)
        return dst

    out, traffic = byte_count.count_kernel(launch)
    assert torch.equal(out, src)
    return traffic


def _count_atomic():
    return byte_count.count_kernel(lambda: _atomic_kernel[(1,)](torch.zeros(1)))


def _count_nothing():
    return byte_count.count_kernel(lambda: None)


def test_masked_tail_counts_only_unmasked_lanes():
    """10 fp32 elements in blocks of 8: two programs, the second with 6 lanes masked off."""
    traffic = byte_count.in_interpreter(_count_copy, 10, 8, torch.float32, False, 1)
    assert traffic.issued == traffic.per_program == traffic.unique == Traffic(read=40, written=40)
    assert (traffic.launches, traffic.programs) == (1, 2)


def test_element_size_comes_from_the_pointer_type():
    traffic = byte_count.in_interpreter(_count_copy, 10, 8, torch.float16, False, 1)
    assert traffic.issued == Traffic(read=20, written=20)


def test_rereads_are_issued_each_time_and_unique_once():
    """Each program also loads src[0]: issued counts both programs' loads of it, per-program
    counts it once in program 1 (program 0's block holds it already), unique once in all."""
    traffic = byte_count.in_interpreter(_count_copy, 10, 8, torch.float32, True, 1)
    assert traffic.issued == Traffic(read=48, written=40)
    assert traffic.per_program == Traffic(read=44, written=40)
    assert traffic.unique == Traffic(read=40, written=40)


def test_several_launches_add_up_and_share_unique_bytes():
    traffic = byte_count.in_interpreter(_count_copy, 10, 8, torch.float32, False, 3)
    assert traffic.issued == traffic.per_program == Traffic(read=120, written=120)
    assert traffic.unique == Traffic(read=40, written=40)
    assert (traffic.launches, traffic.programs) == (3, 6)


def test_uncounted_memory_operations_and_empty_calls_are_refused():
    with pytest.raises(Exception, match="does not count"):
        byte_count.in_interpreter(_count_atomic)
    with pytest.raises(RuntimeError, match="no Triton kernel"):
        byte_count.in_interpreter(_count_nothing)


def test_a_process_with_compiled_triton_counts_in_a_child(monkeypatch):
    """The path the benches take (their triton is not interpreted): same figures from a fresh process."""
    monkeypatch.setattr(byte_count, "_interpreter_active", lambda: False)
    traffic = byte_count.in_interpreter(_count_copy, 10, 8, torch.float32, True, 1)
    assert traffic.per_program == Traffic(read=44, written=40)


def test_torch_ops_read_inputs_and_write_outputs_once():
    a, b, one = torch.ones(100), torch.ones(100), torch.ones(1)
    assert byte_count.count_torch(lambda: a + b)[1] == Traffic(read=800, written=400)
    # A broadcast operand counts its distinct elements.
    assert byte_count.count_torch(lambda: a + one.expand(100))[1] == Traffic(read=404, written=400)
    out = torch.empty(100)
    assert byte_count.count_torch(lambda: torch.add(a, b, out=out))[1] == Traffic(read=800, written=400)
    assert byte_count.count_torch(lambda: a.add_(b))[1] == Traffic(read=800, written=400)


def test_views_allocations_and_overwrites_move_no_extra_bytes():
    a, b = torch.ones(10, 10), torch.ones(10)
    assert byte_count.count_torch(lambda: a[:, 2:5].transpose(0, 1))[1] == Traffic(0, 0)
    assert byte_count.count_torch(lambda: torch.ops.aten._unsafe_view(a, (100,)))[1] == Traffic(0, 0)
    assert byte_count.count_torch(lambda: torch.empty_like(a))[1] == Traffic(0, 0)
    assert byte_count.count_torch(lambda: torch.zeros_like(a))[1] == Traffic(read=0, written=400)

    def assign_row():
        a[3] = b

    assert byte_count.count_torch(assign_row)[1] == Traffic(read=40, written=40)

    def accumulate_slice():
        a[:, 2:5] += 1.0  # add_ on the view, then a copy_ of the view onto itself (a no-op in ATen)

    assert byte_count.count_torch(accumulate_slice)[1] == Traffic(read=120, written=120)
