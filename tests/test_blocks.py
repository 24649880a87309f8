"""The network's building blocks, one test class each: smoke, bad inputs, known values, gradcheck.

Blocks (``cddfuse.models.cddfuse``): the channel LayerNorm (the authors' ``WithBias_LayerNorm``),
``Conv1x1``, the Restormer block (MDTA attention + gated-Dconv feed-forward), the Lite-Transformer
block (base features) and the INN node (affine coupling with inverted residuals).

Known values come from closed forms, from the authors' formulas written out below with plain
``torch.nn.functional`` calls (two separate convolutions where the module composes them, a
transposed LayerNorm where it uses ``F.layer_norm``), and from the authors' intermediate tensors in
``parity_seed1.npz``. The blocks themselves do not validate their inputs (only ``CDDFuse.forward``
and ``CDDFuseConfig`` do); the bad-input tests pin down which errors PyTorch raises instead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, Union

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cddfuse.models import CDDFuse
from cddfuse.models.cddfuse import (
    ChannelLayerNorm,
    Conv1x1,
    DetailNode,
    GatedFeedForward,
    InvertedResidual,
    LiteTransformerBlock,
    ReflectPad1,
    RestormerBlock,
)

from .helpers import perturb_parameters

DTYPES = [torch.float32, torch.float64]
CASES = ["case0_", "case1_"]  # a 67x93 TNO crop and a 64x64 MRI_PET crop
PARITY_ATOL = 1e-5  # float64 blocks against the authors' float32 tensors

Output = Union[Tensor, tuple[Tensor, ...]]
M = TypeVar("M", bound=nn.Module)


# ----------------------------------------------------------------------------- helpers
def _rand(*shape: int, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    """Reproducible uniform [0, 1) input drawn on the CPU, then moved (same values on every device)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype).to(device)


def _assert_close(got: Tensor, want: Tensor, dtype: torch.dtype) -> None:
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def _random_block(make: Callable[[], M], device: torch.device, dtype: torch.dtype, seed: int = 0) -> M:
    """A block with reproducible random weights; LayerNorm and temperatures perturbed away from 1 and 0."""
    torch.manual_seed(seed)
    block = make()
    perturb_parameters(block)
    return block.to(device=device, dtype=dtype).eval()


def _gradcheck(block: nn.Module, inputs: Sequence[Tensor]) -> bool:
    """``gradcheck`` of a float64 block: the full Jacobian with respect to the inputs, and with respect to
    every parameter in fast mode (random projections of the Jacobian; the full one takes minutes)."""
    names = [name for name, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in block.named_parameters()]
    args = [x.detach().clone().requires_grad_(True) for x in inputs]
    n = len(args)

    def fn(*flat: Tensor) -> Output:
        out: Output = torch.func.functional_call(block, dict(zip(names, flat[n:])), tuple(flat[:n]))
        return out

    frozen = [p.detach() for p in params]
    wrt_inputs = torch.autograd.gradcheck(lambda *x: fn(*x, *frozen), tuple(args), eps=1e-6, atol=1e-6, rtol=1e-4)
    wrt_all = torch.autograd.gradcheck(fn, (*args, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    return wrt_inputs and wrt_all


def _from_reference(make: Callable[[], M], source: nn.Module, device: torch.device) -> M:
    """A fresh block holding the weights of ``source`` (a submodule of the authors' seed-1 checkpoint)."""
    block = make()
    block.load_state_dict(source.state_dict())  # strict: the block's keys are the authors'
    return block.to(device=device, dtype=torch.float64).eval()


def _ref(parity: Any, key: str, device: torch.device) -> Tensor:
    return torch.from_numpy(parity[key]).to(device=device, dtype=torch.float64)


def _assert_parity(got: Tensor, want: Tensor, what: str) -> None:
    err = float((got - want).abs().max())
    assert err <= PARITY_ATOL, f"{what}: max abs error {err:.3g} against the authors' tensor"


# -------------------------------------------------------- the authors' formulas, written out
def authors_layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The authors' ``WithBias_LayerNorm`` on ``to_3d(x)`` (``b c h w -> b (h w) c``), back to 4-D."""
    b, c, h, w = x.shape
    x3 = x.flatten(2).transpose(1, 2)
    mu = x3.mean(-1, keepdim=True)
    sigma = x3.var(-1, keepdim=True, unbiased=False)
    y = (x3 - mu) / torch.sqrt(sigma + 1e-5) * weight + bias
    return y.transpose(1, 2).reshape(b, c, h, w)


def authors_channel_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, temperature: Tensor) -> Tensor:
    """``b (head c) h w -> b head c (h w)``, L2-normalised q and k, softmax(q k^T * t) v, and back."""
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = ((q @ k.transpose(-2, -1)) * temperature).softmax(dim=-1)
    return (attn @ v).reshape(b, c, h, w)


def authors_gated_ffn(ffn: GatedFeedForward, x: Tensor, groups: int) -> Tensor:
    """Restormer's ``FeedForward`` / the LT ``Mlp``: 1x1 in, grouped 3x3, GELU(x1) * x2, 1x1 out (no biases)."""
    y = F.conv2d(F.conv2d(x, ffn.project_in.weight), ffn.dwconv.weight, padding=1, groups=groups)
    y1, y2 = y.chunk(2, dim=1)
    return F.conv2d(F.gelu(y1) * y2, ffn.project_out.weight)


def authors_restormer_block(blk: RestormerBlock, x: Tensor, ffn_expansion: float) -> Tensor:
    """Restormer's ``TransformerBlock`` (bias=False, WithBias LayerNorm) as the authors' code runs it."""
    a = blk.attn
    y = authors_layer_norm(x, blk.norm1.body.weight, blk.norm1.body.bias)
    qkv = F.conv2d(F.conv2d(y, a.qkv.weight), a.qkv_dwconv.weight, padding=1, groups=3 * x.shape[1])  # depthwise
    q, k, v = qkv.chunk(3, dim=1)
    x = x + F.conv2d(authors_channel_attention(q, k, v, a.num_heads, a.temperature), a.project_out.weight)
    y = authors_layer_norm(x, blk.norm2.body.weight, blk.norm2.body.bias)
    return x + authors_gated_ffn(blk.ffn, y, groups=2 * int(x.shape[1] * ffn_expansion))  # depthwise


def authors_lite_block(blk: LiteTransformerBlock, x: Tensor, ffn_expansion: float) -> Tensor:
    """The authors' ``BaseFeatureExtraction``: qkv by a 1x1 conv and then a separate full 3x3 conv."""
    a = blk.attn
    y = authors_layer_norm(x, blk.norm1.body.weight, blk.norm1.body.bias)
    qkv = F.conv2d(F.conv2d(y, a.qkv1.weight), a.qkv2.weight, padding=1)
    q, k, v = qkv.chunk(3, dim=1)
    x = x + F.conv2d(authors_channel_attention(q, k, v, a.num_heads, a.scale), a.proj.weight)
    y = authors_layer_norm(x, blk.norm2.body.weight, blk.norm2.body.bias)
    return x + authors_gated_ffn(blk.mlp, y, groups=int(x.shape[1] * ffn_expansion))  # two channels per group


def invert_detail_node(node: DetailNode, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
    """Undo one node from the paper's coupling equations (z2 += phi(z1); z1 = z1 exp(rho(z2)) + eta(z2))
    and the inverse of the 1x1 shuffle convolution."""
    z1 = (y1 - node.theta_eta(y2)) * torch.exp(-node.theta_rho(y2))
    z2 = y2 - node.theta_phi(z1)
    z = torch.cat((z1, z2), dim=1)
    b, c, h, w = z.shape
    weight = node.shffleconv.weight[:, :, 0, 0]
    assert node.shffleconv.bias is not None
    x = torch.linalg.solve(weight, (z - node.shffleconv.bias.view(1, c, 1, 1)).reshape(b, c, h * w))
    x = x.reshape(b, c, h, w)
    return x[:, : c // 2], x[:, c // 2:]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread_no_tf32() -> Iterator[None]:
    """One intra-op thread: the tensors here are tiny, and threads only add synchronisation, which on a
    loaded machine costs up to 40x (a 4-channel block's forward: 1 ms on one thread, 39 ms on two).
    TF32 off, so that float32 comparisons on CUDA hold at 1e-5 as on the CPU. Both restored afterwards."""
    threads, cudnn_tf32, matmul_tf32 = (torch.get_num_threads(), torch.backends.cudnn.allow_tf32,
                                        torch.backends.cuda.matmul.allow_tf32)
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


# ============================================================================ LayerNorm
class TestChannelLayerNorm:
    @pytest.mark.parametrize("shape", [(1, 4, 6, 5), (3, 7, 1, 1), (2, 1, 3, 2)])
    def test_smoke(self, device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int]) -> None:
        ln = _random_block(lambda: ChannelLayerNorm(shape[1]), device, dtype)
        x = _rand(*shape, device=device, dtype=dtype)
        y = ln(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert y.is_contiguous()

    def test_channels_last_stays_channels_last(self, device: torch.device) -> None:
        ln = _random_block(lambda: ChannelLayerNorm(6), device, torch.float32)
        x = _rand(2, 6, 5, 7, device=device)
        y = ln(x.to(memory_format=torch.channels_last))
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        torch.testing.assert_close(y, ln(x), atol=1e-6, rtol=0)

    def test_wrong_channel_count(self, device: torch.device) -> None:
        with pytest.raises(RuntimeError, match="normalized_shape"):
            ChannelLayerNorm(4).to(device)(_rand(1, 6, 5, 3, device=device))

    @pytest.mark.parametrize("shape", [(4, 5, 3), (1, 4, 5, 3, 2)])
    def test_wrong_ndim(self, device: torch.device, shape: tuple[int, ...]) -> None:
        # no check of its own: the permute of a 4-D layout fails (with a message about dimensions)
        with pytest.raises(RuntimeError, match="dimensions"):
            ChannelLayerNorm(4).to(device)(_rand(*shape, device=device))

    def test_standardises_over_channels(self, device: torch.device) -> None:
        """Unit weight, zero bias: every pixel's channel vector gets mean 0 and biased variance 1 (exactly
        var / (var + eps), with the authors' eps = 1e-5)."""
        x = 5.0 + 3.0 * _rand(2, 8, 6, 5, device=device, dtype=torch.float64)
        y = ChannelLayerNorm(8).to(device=device, dtype=torch.float64)(x)
        torch.testing.assert_close(y.mean(dim=1), torch.zeros_like(y[:, 0]), atol=1e-12, rtol=0)
        var = x.var(dim=1, unbiased=False)
        torch.testing.assert_close(y.var(dim=1, unbiased=False), var / (var + 1e-5), atol=1e-12, rtol=0)

    def test_constant_channels_give_the_bias(self, device: torch.device) -> None:
        ln = _random_block(lambda: ChannelLayerNorm(5), device, torch.float64)
        x = torch.full((1, 5, 3, 4), 7.25, device=device, dtype=torch.float64)
        torch.testing.assert_close(ln(x), ln.body.bias.view(1, 5, 1, 1).expand(1, 5, 3, 4), atol=1e-12, rtol=0)

    def test_equals_authors_withbias_layernorm(self, device: torch.device, dtype: torch.dtype) -> None:
        ln = _random_block(lambda: ChannelLayerNorm(6), device, dtype, seed=1)
        x = 4.0 * _rand(2, 6, 7, 5, device=device, dtype=dtype) - 1.0
        _assert_close(ln(x), authors_layer_norm(x, ln.body.weight, ln.body.bias), dtype)

    def test_authors_key_names(self) -> None:
        assert set(ChannelLayerNorm(3).state_dict()) == {"body.weight", "body.bias"}

    def test_gradcheck(self, device: torch.device) -> None:
        ln = _random_block(lambda: ChannelLayerNorm(4), device, torch.float64)
        assert _gradcheck(ln, [_rand(2, 4, 6, 5, device=device, dtype=torch.float64)])


# ============================================================================== Conv1x1
class TestConv1x1:
    @pytest.mark.parametrize("bias", [False, True])
    @pytest.mark.parametrize("batch", [1, 3])
    def test_smoke(self, device: torch.device, dtype: torch.dtype, bias: bool, batch: int) -> None:
        conv = _random_block(lambda: Conv1x1(4, 6, bias=bias), device, dtype)
        x = _rand(batch, 4, 6, 5, device=device, dtype=dtype)
        y = conv(x)
        assert y.shape == (batch, 6, 6, 5) and y.dtype == dtype and y.device == x.device

    def test_same_parameters_as_conv2d(self) -> None:
        ours, theirs = Conv1x1(4, 6, bias=True), nn.Conv2d(4, 6, 1, bias=True)
        shapes = {k: v.shape for k, v in ours.state_dict().items()}
        assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
        assert Conv1x1(4, 6).bias is None  # no bias unless asked for, as the authors' 1x1 convolutions

    def test_wrong_channel_count(self, device: torch.device) -> None:
        # contiguous input: the matrix-product path fails in a reshape (a less clear message than nn.Conv2d's)
        with pytest.raises(RuntimeError, match="invalid for input of size"):
            Conv1x1(4, 6).to(device)(_rand(1, 5, 6, 5, device=device))

    def test_wrong_channel_count_channels_last(self, device: torch.device) -> None:
        x = _rand(1, 5, 6, 5, device=device).to(memory_format=torch.channels_last)
        with pytest.raises(RuntimeError, match="to have 4 channels"):
            Conv1x1(4, 6).to(device)(x)

    def test_wrong_ndim(self, device: torch.device) -> None:
        with pytest.raises(RuntimeError, match="3D .*or 4D"):
            Conv1x1(4, 6).to(device)(_rand(1, 4, 6, 5, 2, device=device))

    def test_unbatched_input_as_conv2d(self, device: torch.device) -> None:
        conv = _random_block(lambda: Conv1x1(4, 6, bias=True), device, torch.float64)
        x = _rand(4, 6, 5, device=device, dtype=torch.float64)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-12, rtol=0)

    @pytest.mark.parametrize("bias", [False, True])
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last", "batch_strided", "empty"])
    def test_equals_conv2d(self, device: torch.device, dtype: torch.dtype, bias: bool, layout: str) -> None:
        conv = _random_block(lambda: Conv1x1(5, 3, bias=bias), device, dtype, seed=2)
        x = _rand(4, 5, 7, 6, device=device, dtype=dtype) - 0.5
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        elif layout == "batch_strided":
            x = x[::2]  # every image contiguous, the batch not
        elif layout == "empty":
            x = x[:0]
        y = conv(x)
        _assert_close(y, F.conv2d(x, conv.weight, conv.bias), dtype)
        assert y.shape == (x.shape[0], 3, 7, 6)

    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_gradcheck(self, device: torch.device, layout: str) -> None:
        conv = _random_block(lambda: Conv1x1(4, 3, bias=True), device, torch.float64)
        x = _rand(2, 4, 6, 5, device=device, dtype=torch.float64)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        assert _gradcheck(conv, [x])


# ======================================================================= Restormer block
class TestRestormerBlock:
    @pytest.mark.parametrize("size", [(6, 5), (1, 1), (9, 2)])
    def test_smoke(self, device: torch.device, dtype: torch.dtype, size: tuple[int, int]) -> None:
        blk = _random_block(lambda: RestormerBlock(8, 2, 2.0), device, dtype)
        x = _rand(2, 8, *size, device=device, dtype=dtype)
        y = blk(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert bool(torch.isfinite(y).all())

    def test_wrong_channel_count(self, device: torch.device) -> None:
        with pytest.raises(RuntimeError, match="normalized_shape"):
            RestormerBlock(8, 2, 2.0).to(device)(_rand(1, 6, 5, 4, device=device))

    def test_wrong_ndim(self, device: torch.device) -> None:
        with pytest.raises(RuntimeError, match="dimensions"):
            RestormerBlock(8, 2, 2.0).to(device)(_rand(8, 5, 4, device=device))

    def test_heads_not_dividing_dim_fail_at_forward(self, device: torch.device) -> None:
        blk = RestormerBlock(6, 4, 2.0).to(device)  # built without complaint: only CDDFuseConfig checks
        with pytest.raises(RuntimeError, match="invalid for input of size"):
            blk(_rand(1, 6, 5, 3, device=device))

    def test_zero_projections_make_it_the_identity(self, device: torch.device) -> None:
        blk = _random_block(lambda: RestormerBlock(8, 2, 2.0), device, torch.float64)
        with torch.no_grad():
            blk.attn.project_out.weight.zero_()
            blk.ffn.project_out.weight.zero_()
        x = _rand(1, 8, 6, 5, device=device, dtype=torch.float64)
        assert torch.equal(blk(x), x)

    @pytest.mark.parametrize("dim,heads,expansion", [(8, 2, 2.0), (6, 3, 2.66), (4, 1, 1.0)])
    def test_equals_authors_transformer_block(self, device: torch.device, dtype: torch.dtype, dim: int, heads: int,
                                              expansion: float) -> None:
        blk = _random_block(lambda: RestormerBlock(dim, heads, expansion), device, dtype, seed=3)
        x = 2.0 * _rand(2, dim, 7, 5, device=device, dtype=dtype) - 1.0
        with torch.no_grad():
            _assert_close(blk(x), authors_restormer_block(blk, x, expansion), dtype)

    def test_images_of_a_batch_are_independent(self, device: torch.device) -> None:
        blk = _random_block(lambda: RestormerBlock(8, 2, 2.0), device, torch.float64)
        x = _rand(3, 8, 6, 5, device=device, dtype=torch.float64)
        with torch.no_grad():
            one_by_one = torch.cat([blk(x[i: i + 1]) for i in range(3)])
            torch.testing.assert_close(blk(x), one_by_one, atol=1e-12, rtol=0)

    @pytest.mark.parametrize("case", CASES)
    def test_encoder_blocks_match_authors(self, seed1_model: CDDFuse, parity: Any, device: torch.device,
                                          case: str) -> None:
        """The authors' 3x3 embedding, then four fresh blocks with their weights = their shallow features."""
        enc = seed1_model.encoder
        blocks = _from_reference(lambda: nn.Sequential(*[RestormerBlock(64, 8, 2.0) for _ in range(4)]),
                                 enc.encoder_level1, device)
        vi = _ref(parity, case + "vi", device)[None, None]
        embed = F.conv2d(vi, enc.patch_embed.proj.weight.to(device=device, dtype=torch.float64), padding=1)
        with torch.no_grad():
            _assert_parity(blocks(embed), _ref(parity, case + "vi_shallow", device), case + "vi_shallow")

    def test_gradcheck(self, device: torch.device) -> None:
        blk = _random_block(lambda: RestormerBlock(4, 2, 2.0), device, torch.float64)
        assert _gradcheck(blk, [_rand(1, 4, 6, 5, device=device, dtype=torch.float64)])


# ================================================================= Lite-Transformer block
class TestLiteTransformerBlock:
    @pytest.mark.parametrize("size", [(6, 5), (1, 1), (2, 9)])
    def test_smoke(self, device: torch.device, dtype: torch.dtype, size: tuple[int, int]) -> None:
        blk = _random_block(lambda: LiteTransformerBlock(8, 2), device, dtype)
        x = _rand(2, 8, *size, device=device, dtype=dtype)
        y = blk(x)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert bool(torch.isfinite(y).all())

    def test_mlp_groups_see_two_channels(self) -> None:
        blk = LiteTransformerBlock(8, 2, ffn_expansion=1.0)
        assert blk.mlp.dwconv.groups == 8 and blk.mlp.dwconv.weight.shape == (16, 2, 3, 3)
        assert blk.attn.qkv2.weight.shape == (24, 24, 3, 3)  # a full 3x3 convolution, not depthwise

    def test_wrong_channel_count(self, device: torch.device) -> None:
        with pytest.raises(RuntimeError, match="normalized_shape"):
            LiteTransformerBlock(8, 2).to(device)(_rand(1, 4, 5, 4, device=device))

    def test_wrong_ndim(self, device: torch.device) -> None:
        with pytest.raises(RuntimeError, match="dimensions"):
            LiteTransformerBlock(8, 2).to(device)(_rand(1, 8, 5, 4, 1, device=device))

    def test_heads_not_dividing_dim_fail_at_forward(self, device: torch.device) -> None:
        blk = LiteTransformerBlock(6, 4).to(device)
        with pytest.raises(RuntimeError, match="invalid for input of size"):
            blk(_rand(1, 6, 5, 3, device=device))

    def test_zero_projections_make_it_the_identity(self, device: torch.device) -> None:
        blk = _random_block(lambda: LiteTransformerBlock(8, 2), device, torch.float64)
        with torch.no_grad():
            blk.attn.proj.weight.zero_()
            blk.mlp.project_out.weight.zero_()
        x = _rand(1, 8, 6, 5, device=device, dtype=torch.float64)
        assert torch.equal(blk(x), x)

    @pytest.mark.parametrize("dim,heads,expansion", [(8, 2, 1.0), (6, 3, 1.0), (4, 2, 2.0)])
    def test_equals_authors_two_convolution_attention(self, device: torch.device, dtype: torch.dtype, dim: int,
                                                      heads: int, expansion: float) -> None:
        """The composed qkv convolution gives what qkv1 then qkv2 give, borders (zero padding) included."""
        blk = _random_block(lambda: LiteTransformerBlock(dim, heads, expansion), device, dtype, seed=4)
        x = 2.0 * _rand(2, dim, 5, 7, device=device, dtype=dtype) - 1.0
        with torch.no_grad():
            _assert_close(blk(x), authors_lite_block(blk, x, expansion), dtype)

    @pytest.mark.parametrize("case", CASES)
    @pytest.mark.parametrize("part,inputs,output", [
        ("encoder.baseFeature", ("vi_shallow",), "vi_base"),
        ("base_fuse", ("ir_base", "vi_base"), "fused_base"),
    ])
    def test_matches_authors(self, seed1_model: CDDFuse, parity: Any, device: torch.device, case: str, part: str,
                             inputs: tuple[str, ...], output: str) -> None:
        blk = _from_reference(lambda: LiteTransformerBlock(64, 8, 1.0), seed1_model.get_submodule(part), device)
        x = sum(_ref(parity, case + key, device) for key in inputs)
        assert isinstance(x, Tensor)
        with torch.no_grad():
            _assert_parity(blk(x), _ref(parity, case + output, device), case + output)

    def test_gradcheck(self, device: torch.device) -> None:
        blk = _random_block(lambda: LiteTransformerBlock(4, 2), device, torch.float64)
        assert _gradcheck(blk, [_rand(1, 4, 6, 5, device=device, dtype=torch.float64)])


# ============================================================================== INN node
class TestDetailNode:
    @pytest.mark.parametrize("size", [(6, 5), (1, 1), (1, 4)])
    def test_smoke(self, device: torch.device, dtype: torch.dtype, size: tuple[int, int]) -> None:
        node = _random_block(lambda: DetailNode(8, 2.0), device, dtype)
        z1, z2 = _rand(2, 4, *size, device=device, dtype=dtype), _rand(2, 4, *size, device=device, dtype=dtype, seed=1)
        y1, y2 = node(z1, z2)
        for y in (y1, y2):
            assert y.shape == z1.shape and y.dtype == dtype and y.device == z1.device
            assert bool(torch.isfinite(y).all())

    def test_wrong_channel_count(self, device: torch.device) -> None:
        node = DetailNode(8, 2.0).to(device)
        with pytest.raises(RuntimeError, match="invalid for input of size"):
            node(_rand(1, 3, 5, 4, device=device), _rand(1, 3, 5, 4, device=device))

    def test_uneven_halves_are_resplit(self, device: torch.device) -> None:
        """No check of the split: 1 + 7 channels pass the shuffle convolution like 4 + 4 and come out as halves."""
        node = _random_block(lambda: DetailNode(8, 2.0), device, torch.float64)
        x = _rand(1, 8, 5, 4, device=device, dtype=torch.float64)
        uneven = node(x[:, :1], x[:, 1:])
        even = node(x[:, :4], x[:, 4:])
        for u, e in zip(uneven, even):
            assert u.shape == (1, 4, 5, 4)
            torch.testing.assert_close(u, e, atol=0, rtol=0)

    def test_odd_dim_fails_at_forward(self, device: torch.device) -> None:
        node = DetailNode(5, 2.0).to(device)  # built without complaint: only CDDFuseConfig checks
        with pytest.raises(RuntimeError, match="must match the size"):
            node(_rand(1, 2, 4, 4, device=device), _rand(1, 3, 4, 4, device=device))

    def test_wrong_ndim(self, device: torch.device) -> None:
        node = DetailNode(8, 2.0).to(device)
        with pytest.raises(RuntimeError, match="to have 8 channels"):  # unbatched: the channel axis is wrong
            node(_rand(4, 5, 3, device=device), _rand(4, 5, 3, device=device))

    def test_inverts_with_the_coupling_equations(self, device: torch.device) -> None:
        """z2 += phi(z1), then z1 = z1 * exp(rho(z2)) + eta(z2), after an invertible 1x1 mix: undone exactly."""
        node = _random_block(lambda: DetailNode(8, 2.0), device, torch.float64, seed=5)
        z1 = 2.0 * _rand(2, 4, 7, 5, device=device, dtype=torch.float64) - 1.0
        z2 = 2.0 * _rand(2, 4, 7, 5, device=device, dtype=torch.float64, seed=1) - 1.0
        with torch.no_grad():
            y1, y2 = node(z1, z2)
            assert not torch.allclose(y1, z1, atol=1e-3)
            x1, x2 = invert_detail_node(node, y1, y2)
        torch.testing.assert_close(x1, z1, atol=1e-9, rtol=0)
        torch.testing.assert_close(x2, z2, atol=1e-9, rtol=0)

    @pytest.mark.parametrize("dw,c,expected", [
        (1.0, -1.0, 0.0), (1.0, 0.01, 0.18), (1.0, 0.25, 4.5), (1.0, 2.0, 6.0),  # second ReLU6 clips 9 * 4
        (1 / 18, 50.0, 3.0),  # first ReLU6 clips 2c = 100 to 6, then 9 / 18 * 6
    ])
    def test_inverted_residual_closed_form(self, device: torch.device, dw: float, c: float, expected: float) -> None:
        """Ones as 1x1 weights, ``dw`` as depthwise weights, constant input c on 2 channels: 1x1 -> 2c, ReLU6,
        3x3 depthwise -> 9 dw * that, ReLU6, 1x1 summing the 4 hidden channels: 4 * clip(9 dw clip(2c, 0, 6), 0, 6)
        at every pixel, borders included (the padding reflects, it adds no zeros)."""
        block = InvertedResidual(2, 3, expansion=2.0).to(device=device, dtype=torch.float64)
        with torch.no_grad():
            for p in block.parameters():
                p.fill_(1.0)
            depthwise = block.bottleneckBlock[3]
            assert isinstance(depthwise, nn.Conv2d) and depthwise.groups == 4
            depthwise.weight.fill_(dw)
            y = block(torch.full((1, 2, 4, 5), c, device=device, dtype=torch.float64))
        torch.testing.assert_close(y, torch.full((1, 3, 4, 5), 4 * expected, device=device, dtype=torch.float64),
                                   atol=1e-12, rtol=0)

    def test_reflection_padding(self, device: torch.device) -> None:
        pad = ReflectPad1()
        x = _rand(1, 3, 4, 5, device=device)
        assert torch.equal(pad(x), nn.ReflectionPad2d(1)(x))
        one = _rand(1, 3, 1, 1, device=device)
        assert torch.equal(pad(one), one.expand(1, 3, 3, 3))  # 1x1: replicated, reflection is undefined

    @pytest.mark.parametrize("case", CASES)
    def test_fusion_node_matches_authors(self, seed1_model: CDDFuse, parity: Any, device: torch.device,
                                         case: str) -> None:
        """The detail fusion layer is one node: node(halves of ir_detail + vi_detail) = fused_detail."""
        node = _from_reference(lambda: DetailNode(64, 2.0), seed1_model.detail_fuse.net[0], device)
        x = _ref(parity, case + "ir_detail", device) + _ref(parity, case + "vi_detail", device)
        with torch.no_grad():
            y = torch.cat(node(x[:, :32], x[:, 32:]), dim=1)
        _assert_parity(y, _ref(parity, case + "fused_detail", device), case + "fused_detail")

    @pytest.mark.parametrize("case", CASES)
    def test_encoder_nodes_match_authors(self, seed1_model: CDDFuse, parity: Any, device: torch.device,
                                         case: str) -> None:
        """Three fresh nodes chained by hand with the encoder's weights: vi_shallow -> vi_detail."""
        nodes = [_from_reference(lambda: DetailNode(64, 2.0), src, device)
                 for src in seed1_model.encoder.detailFeature.net]
        assert len(nodes) == 3
        x = _ref(parity, case + "vi_shallow", device)
        z1, z2 = x[:, :32], x[:, 32:]
        with torch.no_grad():
            for node in nodes:
                z1, z2 = node(z1, z2)
        _assert_parity(torch.cat((z1, z2), dim=1), _ref(parity, case + "vi_detail", device), case + "vi_detail")

    def test_gradcheck(self, device: torch.device) -> None:
        node = _random_block(lambda: DetailNode(4, 2.0), device, torch.float64)
        z1 = _rand(1, 2, 6, 5, device=device, dtype=torch.float64)
        z2 = _rand(1, 2, 6, 5, device=device, dtype=torch.float64, seed=1)
        assert _gradcheck(node, [z1, z2])
