"""Public API contract: bad input gets clear errors, backend selection, torch.compile."""

import pytest
import torch

import zs_kernels
from zs_kernels import ops


def qkv(n=2, heads=2, frames=8, dim=4, dtype=torch.float32):
    return [torch.randn(n, heads, frames, dim, dtype=dtype) for _ in range(3)]


def raises(error, *words):
    """Context manager: the error's type and every word of its message."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{__import__('re').escape(w)})" for w in words))


def test_public_names():
    for name in ("frame_operator", "back_project", "window_starts", "window_weights", "windowed_attention", "corrected_qkv"):
        assert callable(getattr(zs_kernels, name))
    assert callable(zs_kernels.reference.windowed_attention)


class TestWindowedAttentionErrors:
    def test_rank(self):
        q, k, v = qkv()
        with raises(ValueError, "q", "4 dimensions", "(2, 8, 4)"):
            zs_kernels.windowed_attention(q[0], k, v, window=4, stride=2)

    def test_mismatched_shapes(self):
        q, k, v = qkv()
        with raises(ValueError, "k", "(2, 2, 8, 4)", "(2, 2, 7, 4)"):
            zs_kernels.windowed_attention(q, k[:, :, :7], v, window=4, stride=2)

    def test_integer_dtype(self):
        q, k, v = qkv()
        with raises(TypeError, "q", "floating", "torch.int64"):
            zs_kernels.windowed_attention(q.long(), k, v, window=4, stride=2)

    def test_mixed_dtypes(self):
        q, k, v = qkv()
        with raises(TypeError, "v", "torch.float16", "torch.float32"):
            zs_kernels.windowed_attention(q, k, v.half(), window=4, stride=2)

    @pytest.mark.parametrize("window, stride, words", [(0, 1, ["window", ">= 1"]), (4, 0, ["stride", ">= 1"]), (4, 5, ["stride", "<= 4"])])
    def test_window_and_stride(self, window, stride, words):
        with raises(ValueError, *words):
            zs_kernels.windowed_attention(*qkv(), window=window, stride=stride)

    def test_non_integer_window(self):
        with raises(TypeError, "window", "integer", "4.0"):
            zs_kernels.windowed_attention(*qkv(), window=4.0, stride=2)

    def test_weighting(self):
        with raises(ValueError, "weighting", "'gauss'", "pyramid"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, weighting="gauss")

    def test_scale(self):
        with raises(ValueError, "scale", "-1"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, scale=-1)

    def test_relative_table_shape(self):
        with raises(ValueError, "rel_k", "[2R+1, D=4]", "(4, 4)"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, rel_k=torch.randn(4, 4))

    def test_blend_without_corrected(self):
        with raises(ValueError, "blend", "corrected"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, blend=0.5)

    def test_corrected_without_blend(self):
        with raises(ValueError, "blend", "None"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, corrected=tuple(qkv()))

    def test_corrected_shape(self):
        corrected = qkv(frames=6)
        with raises(ValueError, "corrected q_hat", "(2, 2, 8, 4)"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, corrected=tuple(corrected), blend=0.1)

    def test_unknown_backend(self):
        with raises(ValueError, "backend", "'cuda'", "auto"):
            zs_kernels.windowed_attention(*qkv(), window=4, stride=2, backend="cuda")


class TestCorrectedQkvErrors:
    def args(self, frames=8, key_frames=4, channels=6, c_out=5):
        return torch.randn(2, frames, 3, channels), torch.randn(2, key_frames, 3, 3 * c_out), torch.randn(3 * c_out, channels)

    def test_key_frames_do_not_match(self):
        h, key, weight = self.args(key_frames=3)
        with raises(ValueError, "key_qkv", "t0 = t/scale = 4", "(2, 3, 3, 15)"):
            zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample")

    def test_frames_not_multiple_of_scale(self):
        h, key, weight = self.args(frames=9)
        with raises(ValueError, "t=9", "scale=2"):
            zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample")

    def test_weight_shape(self):
        h, key, _ = self.args()
        with raises(ValueError, "weight", "[3*C_out, C=6]", "(14, 6)"):
            zs_kernels.corrected_qkv(h, key, torch.randn(14, 6), scale=2, kv_kind="sample")

    def test_bias_shape(self):
        h, key, weight = self.args()
        with raises(ValueError, "bias", "(15,)", "(5,)"):
            zs_kernels.corrected_qkv(h, key, weight, torch.randn(5), scale=2, kv_kind="sample")

    @pytest.mark.parametrize("scale, error, words", [(1, ValueError, ["scale", ">= 2"]), (2.5, TypeError, ["scale", "integer"])])
    def test_scale(self, scale, error, words):
        h, key, weight = self.args()
        with raises(error, *words):
            zs_kernels.corrected_qkv(h, key, weight, scale=scale, kv_kind="sample")

    def test_kind(self):
        with raises(ValueError, "kv_kind", "'box'", "box_left"):
            zs_kernels.corrected_qkv(*self.args(), scale=2, kv_kind="box")

    def test_dtype_mismatch(self):
        h, key, weight = self.args()
        with raises(TypeError, "weight", "torch.float64", "torch.float32"):
            zs_kernels.corrected_qkv(h, key, weight.double(), scale=2, kv_kind="sample")

    def test_rank(self):
        h, key, weight = self.args()
        with raises(ValueError, "h", "4 dimensions"):
            zs_kernels.corrected_qkv(h[0], key, weight, scale=2, kv_kind="sample")


class TestBackProjectErrors:
    def test_frames_not_multiple(self):
        with raises(ValueError, "x", "7 frames", "scale=2"):
            zs_kernels.back_project(torch.randn(2, 7, 3), torch.randn(2, 3, 3), "sample", 2)

    def test_key_shape(self):
        with raises(ValueError, "y", "(2, 4, 3)", "(2, 3, 3)"):
            zs_kernels.back_project(torch.randn(2, 8, 3), torch.randn(2, 3, 3), "sample", 2)

    def test_frame_dim(self):
        with raises(ValueError, "frame_dim", "5"):
            zs_kernels.back_project(torch.randn(2, 8, 3), torch.randn(2, 4, 3), "sample", 2, frame_dim=5)

    def test_no_triton_kernel(self):
        with raises(ValueError, "back_project", "Triton"):
            zs_kernels.back_project(torch.randn(2, 8, 3), torch.randn(2, 4, 3), "sample", 2, backend="triton")


def test_auto_backend_is_torch_on_cpu():
    assert ops.resolve_backend("auto", torch.zeros(1), "op") == "torch"


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with raises(RuntimeError, "backend='triton'", "TRITON_INTERPRET=1", "cpu"):
        zs_kernels.windowed_attention(*qkv(), window=4, stride=2, backend="triton")


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_backends_agree(backend):
    q, k, v = qkv(dtype=torch.float64)
    expected = zs_kernels.reference.windowed_attention(q, k, v, window=4, stride=3)
    torch.testing.assert_close(zs_kernels.windowed_attention(q, k, v, window=4, stride=3, backend=backend), expected)


class TinyTemporalBlock(torch.nn.Module):
    """A model fragment calling every public tensor op, as a front end would."""

    def __init__(self, channels=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(channels, 3 * channels)

    def forward(self, h, key_qkv):
        qkv, qkv_hat = zs_kernels.corrected_qkv(h, key_qkv, self.qkv.weight, self.qkv.bias, scale=2, kv_kind="box_left")
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
    torch._dynamo.reset()
    model = TinyTemporalBlock()
    h, key_qkv = torch.randn(2, 8, 3, 8), torch.randn(2, 4, 3, 24)
    expected = model(h, key_qkv)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(h, key_qkv), expected)
    explanation = torch._dynamo.explain(model)(h, key_qkv)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_back_project_auto_asks_for_the_torch_path_on_every_device(monkeypatch):
    """back_project has no kernel, so "auto" must never resolve to Triton (even for CUDA tensors)."""
    requested = []
    resolve = ops.resolve_backend

    def recording_resolve(backend, tensor, op):
        requested.append(backend)
        return resolve(backend, tensor, op)

    monkeypatch.setattr(ops, "resolve_backend", recording_resolve)
    x, y = torch.randn(2, 8, 3), torch.randn(2, 4, 3)
    result = zs_kernels.back_project(x, y, "box_right", 2)
    assert requested == ["torch"]
    torch.testing.assert_close(result, zs_kernels.reference.back_project(x, y, "box_right", 2))


def test_triton_qkv_correction_refuses_float64_clearly():
    h, key, weight = (torch.randn(shape, dtype=torch.float64) for shape in ((1, 4, 2, 16), (1, 2, 2, 48), (48, 16)))
    with raises(TypeError, "float64", "backend='torch'"):
        zs_kernels.corrected_qkv(h, key, weight, scale=2, kv_kind="sample", backend="triton")
