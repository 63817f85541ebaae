"""Each part of the network against its formula, written out independently."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.attention import ChannelAttention, PositionAttention
from models.edge import ERB, SOBEL_X, SOBEL_Y, sobel_filter, sobel_gate
from models.noise import BayarConv2d, rgb_to_gray


def test_bayar_effective_kernel_constraint_and_layout():
    conv = BayarConv2d(1, 3, kernel_size=5, padding=2)
    with torch.no_grad():
        conv.kernel.copy_(torch.rand(1, 3, 24) + 0.1)
    k = conv.effective_kernel()
    assert k.shape == (3, 1, 5, 5)
    flat = k.reshape(3, 25)
    assert torch.all(flat[:, 12] == -1)
    off_centre = torch.cat([flat[:, :12], flat[:, 13:]], 1)
    torch.testing.assert_close(off_centre.sum(1), torch.ones(3))
    # raster order: the stored values, normalised, with -1 spliced in at index 12
    stored = conv.kernel[0, 1] / conv.kernel[0, 1].sum()
    torch.testing.assert_close(flat[1, :12], stored[:12])
    torch.testing.assert_close(flat[1, 13:], stored[12:])


def test_bayar_normalisation_is_idempotent_like_the_release():
    conv = BayarConv2d(1, 3)
    x = torch.randn(1, 1, 20, 20)
    before = conv(x)
    with torch.no_grad():  # what the release does in place at every forward
        conv.kernel.div_(conv.kernel.sum(2, keepdim=True))
    torch.testing.assert_close(conv(x), before, rtol=1e-5, atol=1e-6)


def test_gray_uses_bgr_channel_order():
    x = torch.zeros(1, 3, 2, 2)
    x[:, 2] = 1.0  # channel 2 is R in BGR order
    torch.testing.assert_close(rgb_to_gray(x), torch.full((1, 1, 2, 2), 0.2989))


def test_sobel_gate_formula():
    torch.manual_seed(0)
    feat = torch.randn(1, 4, 8, 8)
    sx, sy = sobel_filter(4, SOBEL_X).eval(), sobel_filter(4, SOBEL_Y).eval()
    gx = F.conv2d(feat, torch.tensor(SOBEL_X).expand(1, 4, 3, 3), padding=1)
    gy = F.conv2d(feat, torch.tensor(SOBEL_Y).expand(1, 4, 3, 3), padding=1)
    bn = 1 / (1 + 1e-5) ** 0.5  # eval BatchNorm with default statistics
    expected = torch.sigmoid(torch.sqrt((gx * bn) ** 2 + (gy * bn) ** 2)) * feat
    torch.testing.assert_close(sobel_gate(feat, sx, sy), expected, rtol=1e-5, atol=1e-6)


def test_erb_relu_option():
    torch.manual_seed(0)
    erb = ERB(4, 1).eval()
    x = torch.randn(1, 4, 6, 6)
    plain = erb(x, relu=False)
    torch.testing.assert_close(erb(x), torch.relu(plain))
    assert (plain < 0).any()


def test_position_attention_formula():
    torch.manual_seed(0)
    pam = PositionAttention(16).eval()
    with torch.no_grad():
        pam.alpha.fill_(0.7)
    x = torch.randn(2, 16, 3, 5)
    b = pam.conv_b(x).flatten(2)
    c = pam.conv_c(x).flatten(2)
    d = pam.conv_d(x).flatten(2)
    a = torch.softmax(torch.einsum("nki,nkj->nij", b, c), dim=-1)  # A[i, j]
    out = torch.einsum("nci,nji->ncj", d, a).reshape_as(x)  # D · Aᵀ
    torch.testing.assert_close(pam(x), 0.7 * out + x, rtol=1e-5, atol=1e-5)


def test_channel_attention_formula():
    torch.manual_seed(0)
    cam = ChannelAttention()
    with torch.no_grad():
        cam.beta.fill_(0.3)
    x = torch.randn(2, 6, 4, 4)
    flat = x.flatten(2)
    energy = flat @ flat.transpose(1, 2)
    a = torch.softmax(energy.max(-1, keepdim=True).values - energy, dim=-1)
    torch.testing.assert_close(cam(x), 0.3 * (a @ flat).reshape_as(x) + x)


def test_exact_size_resize_equals_release_scale_factor_upsampling():
    x = torch.randn(1, 1, 8, 8)
    by_factor = torch.nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)(x)
    by_size = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=True)
    assert torch.equal(by_factor, by_size)


def _large_activations() -> torch.Tensor:
    # post-ReLU features of this size reach channel-attention energies of about 2.6e5 on a
    # 64×64 map (a 512² input), beyond fp16's 65504
    torch.manual_seed(0)
    return 8.0 + torch.rand(1, 16, 64, 64)


def test_attention_energies_hold_under_fp16_autocast() -> None:
    """fp16 autocast (the GPU's mixed precision where bf16 is missing, and --amp fp16)
    made the CAM energy inf and every map NaN; both blocks now match fp32."""
    x = _large_activations()
    position, channel = PositionAttention(16).eval(), ChannelAttention().eval()
    with torch.no_grad():
        position.alpha.fill_(0.5)
        channel.beta.fill_(0.5)
        expected = [block(x) for block in (position, channel)]
        with torch.autocast("cpu", dtype=torch.float16):
            got = [block(x) for block in (position, channel)]
    for want, have in zip(expected, got, strict=True):
        assert torch.isfinite(have).all()
        torch.testing.assert_close(have.float(), want, rtol=2e-2, atol=0.1)


def test_attention_energies_hold_in_half_models() -> None:
    """A model cast with .half() (no autocast) runs the same fp32 energies and keeps fp16
    outputs."""
    x = _large_activations()
    channel = ChannelAttention().eval()
    with torch.no_grad():
        channel.beta.fill_(0.5)
        want = channel(x)
        have = channel.half()(x.half())
    assert have.dtype == torch.float16 and torch.isfinite(have).all()
    torch.testing.assert_close(have.float(), want, rtol=2e-2, atol=0.1)


def test_sobel_gate_gradients_stay_finite_in_fp16() -> None:
    """Where both Sobel responses are zero or tiny, fp16 flushed the epsilon and the
    squares to zero and the square root's gradient was NaN: under fp16 training on a
    GPU the gradient scaler then skipped step after step until nothing learned."""
    torch.manual_seed(0)
    sx, sy = sobel_filter(4, SOBEL_X).eval(), sobel_filter(4, SOBEL_Y).eval()
    feature = torch.zeros(1, 4, 12, 12)
    feature[:, :, 6:, 6:] = 1e-5  # a faint corner: responses whose squares flush in fp16
    feature[:, :, :3, :3] = torch.randn(1, 4, 3, 3)  # and ordinary ones
    grads = {}
    for dtype in (torch.float32, torch.float16):
        f = feature.to(dtype).detach().requires_grad_()
        out = sobel_gate(f, sx.to(dtype), sy.to(dtype))
        assert out.dtype == dtype
        out.float().sum().backward()
        grads[dtype] = f.grad.float()
    assert torch.isfinite(grads[torch.float16]).all()
    assert torch.allclose(grads[torch.float16], grads[torch.float32], atol=1e-2)
