"""The public API as a front end sees it: names, backend selection, agreement between backends,
and torch.compile over a model fragment that calls every op."""

import pytest
import torch

import zs_kernels

from .helpers import raises


def qkv(n=2, heads=2, frames=8, dim=4, dtype=torch.float32):
    return [torch.randn(n, heads, frames, dim, dtype=dtype) for _ in range(3)]


def test_public_names():
    for name in (
        "frame_operator", "frame_operator_pinv", "back_project", "window_starts", "window_weights",
        "windowed_attention", "corrected_qkv",
    ):
        assert callable(getattr(zs_kernels, name)), name
    for name in ("back_project", "windowed_attention", "corrected_qkv"):
        assert callable(getattr(zs_kernels.reference, name)), name
    from zs_kernels.reference import back_project, corrected_qkv, windowed_attention  # noqa: F401

    assert zs_kernels.BACKENDS == ("auto", "torch", "triton", "reference")
    assert zs_kernels.OPERATOR_KINDS == ("sample", "box_left", "box_right")
    assert zs_kernels.WEIGHT_SCHEMES == ("pyramid", "flat")


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' takes the kernel on a CUDA machine's CUDA tensors only")
def test_auto_backend_is_the_torch_path_on_cpu():
    q, k, v = qkv()
    expected = zs_kernels.windowed_attention(q, k, v, window=4, stride=3, backend="torch")
    assert torch.equal(zs_kernels.windowed_attention(q, k, v, window=4, stride=3), expected)
    h, key, weight = torch.randn(2, 8, 3, 6), torch.randn(2, 4, 3, 15), torch.randn(15, 6)
    expected = zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="box_left", backend="torch")
    for a, b in zip(zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="box_left"), expected):
        assert torch.equal(a, b)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with raises(RuntimeError, "backend='triton'", "TRITON_INTERPRET=1", "cpu"):
        zs_kernels.windowed_attention(*qkv(), window=4, stride=2, backend="triton")
    h, key, weight = torch.randn(1, 4, 2, 16), torch.randn(1, 2, 2, 48), torch.randn(48, 16)
    with raises(RuntimeError, "backend='triton'", "corrected_qkv", "cpu"):
        zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample", backend="triton")


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_backends_agree(backend):
    q, k, v = qkv(dtype=torch.float64)
    expected = zs_kernels.reference.windowed_attention(q, k, v, window=4, stride=3)
    torch.testing.assert_close(zs_kernels.windowed_attention(q, k, v, window=4, stride=3, backend=backend), expected)
    h, key, weight = (torch.randn(shape, dtype=torch.float64) for shape in ((2, 6, 3, 5), (2, 3, 3, 12), (12, 5)))
    expected = zs_kernels.reference.corrected_qkv(h, key, weight, scale=2, kv_kind="box_right")
    results = zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="box_right", backend=backend)
    for result, truth in zip(results, expected):
        torch.testing.assert_close(result, truth)


class TinyTemporalBlock(torch.nn.Module):
    """A model fragment calling every public tensor op, as a front end would (three projection
    layers, as in diffusers' ``Attention``, handed to ``corrected_qkv`` as they are)."""

    def __init__(self, channels=8, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(channels, channels) for _ in range(3))

    def forward(self, h, key_qkv):
        layers = (self.to_q, self.to_k, self.to_v)
        weights, biases = tuple(layer.weight for layer in layers), tuple(layer.bias for layer in layers)
        qkv, qkv_hat = zs_kernels.corrected_qkv(h, key_qkv, weights, biases, scale=2, kv_kind="box_left")
        batch, frames, tokens, _ = h.shape

        def heads(t):  # [B, t, L, C] → [B·L, heads, t, d]
            return t.transpose(1, 2).reshape(batch * tokens, frames, self.heads, -1).transpose(1, 2)

        q, k, v = (heads(t) for t in qkv.chunk(3, dim=-1))
        corrected = tuple(heads(t) for t in qkv_hat.chunk(3, dim=-1))
        out = zs_kernels.windowed_attention(q, k, v, window=4, stride=2, corrected=corrected, blend=0.5)
        out = out.transpose(1, 2).reshape(batch, tokens, frames, -1).transpose(1, 2)
        return zs_kernels.back_project(out, out[:, ::2] * 0.5, "sample", 2)


@torch.no_grad()  # the ops are inference ops: they register no autograd formula
def test_ops_compile_fullgraph_without_graph_breaks():
    """On CPU the ops' torch paths are plain PyTorch that dynamo traces into one graph (on CUDA
    the Triton kernels are custom ops with fake implementations, opaque to it)."""
    torch._dynamo.reset()
    model = TinyTemporalBlock()
    h, key_qkv = torch.randn(2, 8, 3, 8), torch.randn(2, 4, 3, 24)
    expected = model(h, key_qkv)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(h, key_qkv), expected)
    explanation = torch._dynamo.explain(model)(h, key_qkv)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.cuda
@torch.no_grad()
def test_custom_ops_compile_fullgraph_on_cuda(gpu):
    """The Triton kernels as custom ops: the fake implementations let the fragment compile as one
    graph, and the compiled model runs the kernels to the eager numbers."""
    torch._dynamo.reset()
    model = TinyTemporalBlock(channels=64, heads=2).to(gpu).half()
    h, key_qkv = torch.randn(2, 8, 16, 64, device=gpu).half(), torch.randn(2, 4, 16, 192, device=gpu).half()
    expected = model(h, key_qkv)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(h, key_qkv), expected)
    explanation = torch._dynamo.explain(model)(h, key_qkv)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
