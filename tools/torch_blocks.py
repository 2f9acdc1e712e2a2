"""Small PyTorch versions of the published re-parameterization blocks, with their deploy twins.

Each block is written from its paper and the authors' reference code (RepVGG,
YOLOv6, YOLOv7, PP-YOLOE, ACNet, Diverse Branch Block, MobileOne, RepLKNet,
FastViT, RepGhost, RepViT), keeping the forward pass the way the authors wrote
it so the ONNX exporters see the same ops users bring. ``switch_to_deploy()``
computes the single deploy conv in torch (float64), independently of onnxrep:
it is the reference onnxrep's output is compared against.

    net = SomeNet(...); randomize_(net, seed); net.eval()
    twin = deploy_twin(net)          # a copy with every block switched to deploy
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------
# Kernel algebra (float64). Kernels are (out, in/groups, kh, kw).
# ---------------------------------------------------------------------------


def bn_affine(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = scale·x + shift per channel: scale γ/σ, shift β − μ·γ/σ."""
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv(W) → BN(eval) as one conv: W·γ/σ per output channel, bias β − μ·γ/σ (RepVGG's _fuse_bn_tensor)."""
    scale, shift = bn_affine(bn)
    return kernel.double() * scale.reshape((-1,) + (1,) * (kernel.dim() - 1)), shift


def identity_kernel(channels: int, groups: int, k: int = 1) -> torch.Tensor:
    """The kxk kernel that copies its input: 1 at the centre tap of channel c (c mod in/groups in its group)."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, k, k, dtype=torch.float64)
    for c in range(channels):
        kernel[c, c % per_group, k // 2, k // 2] = 1.0
    return kernel


def center_pad(kernel: torch.Tensor, kh: int, kw: int | None = None) -> torch.Tensor:
    """Zero-pad a kernel to kh x kw with its taps centred (a 1x1 or 3x3 inside a larger square)."""
    kw = kh if kw is None else kw
    dh, dw = kh - kernel.shape[2], kw - kernel.shape[3]
    return F.pad(kernel, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def compose_1x1_kxk(k1, b1, k2, b2, groups: int):
    """DBB transIII: conv2(kxk, no pad) ∘ conv1(1x1), per group: kernel k2 * k1ᵀ, bias b2 + Σ k2·b1."""
    kernels, biases = [], []
    w1, w2 = k1.shape[0] // groups, k2.shape[0] // groups
    for g in range(groups):
        k1_t = k1[g * w1:(g + 1) * w1].permute(1, 0, 2, 3)          # (in/g, w1, 1, 1)
        k2_g = k2[g * w2:(g + 1) * w2]                              # (w2, w1, k, k)
        kernels.append(F.conv2d(k2_g, k1_t))
        biases.append((k2_g * b1[g * w1:(g + 1) * w1].reshape(1, -1, 1, 1)).sum((1, 2, 3)))
    return torch.cat(kernels), torch.cat(biases) + b2


def avg_kernel(channels: int, k: int, groups: int) -> torch.Tensor:
    """DBB transV: AvgPool(k) as a conv, 1/k² on each channel's own input."""
    return identity_kernel(channels, groups, 1).expand(-1, -1, k, k) / (k * k)


def conv_bn(cin, cout, k, stride=1, padding=None, groups=1, eps=1e-5) -> nn.Sequential:
    """Conv (no bias) followed by BatchNorm2d, the building brick of every block."""
    padding = k // 2 if padding is None else padding
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=eps))


def fuse_conv_bn(seq: nn.Sequential):
    return fuse_bn(seq[0].weight, seq[1])


def make_conv(like: dict, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """The deploy conv: geometry from ``like`` (stride, padding, groups), weights cast back to float32."""
    conv = nn.Conv2d(like["cin"], kernel.shape[0], tuple(kernel.shape[2:]), like["stride"], like["padding"],
                     groups=like["groups"], bias=True)
    with torch.no_grad():
        conv.weight.copy_(kernel.float())
        conv.bias.copy_(bias.float())
    return conv


class Reparam(nn.Module):
    """Base of the blocks: ``switch_to_deploy`` replaces the branches by ``self.reparam``.

    Subclasses set ``self.geometry`` (cin, stride, padding, groups of the deploy conv),
    list their branch modules in ``self.branches`` and implement ``kernel_bias()``.
    """

    branches: tuple[str, ...] = ()

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def switch_to_deploy(self):
        kernel, bias = self.kernel_bias()
        self.reparam = make_conv(self.geometry, kernel, bias)
        for name in self.branches:
            if hasattr(self, name):
                delattr(self, name)

    @property
    def deployed(self) -> bool:
        return hasattr(self, "reparam")


# ---------------------------------------------------------------------------
# RepVGG family
# ---------------------------------------------------------------------------


class RepVGGBlock(Reparam):
    """RepVGG (Ding et al., CVPR 2021): 3x3 conv-BN + 1x1 conv-BN + BN identity (stride 1, in == out).

    The detector versions differ only in details, selected by ``variant``:
      - "repvgg": ReLU, BN eps 1e-5.
      - "yolov6": YOLOv6 RepVGGBlock, same branches; YOLOv6's initialize_weights sets BN eps 1e-3.
      - "yolov7": YOLOv7 RepConv, SiLU, eps 1e-3 (initialize_weights), identity BN only if ``identity``.
      - "ppyoloe": PP-YOLOE RepVggBlock, no identity branch, swish (SiLU), optional learnable scalar
        ``alpha`` (shape [1]) multiplying the 1x1 branch (PP-YOLOE+): y = conv3(x) + alpha·conv1(x).
    """

    branches = ("rbr_dense", "rbr_1x1", "rbr_identity", "alpha")

    def __init__(self, cin, cout, stride=1, groups=1, variant="repvgg", identity=True, alpha=False):
        super().__init__()
        eps = 1e-3 if variant in ("yolov6", "yolov7") else 1e-5
        self.act = nn.SiLU() if variant in ("yolov7", "ppyoloe") else nn.ReLU()
        self.geometry = dict(cin=cin, stride=stride, padding=1, groups=groups)
        self.rbr_dense = conv_bn(cin, cout, 3, stride, 1, groups, eps)
        self.rbr_1x1 = conv_bn(cin, cout, 1, stride, 0, groups, eps)
        with_identity = identity and variant != "ppyoloe" and cin == cout and stride == 1
        self.rbr_identity = nn.BatchNorm2d(cin, eps=eps) if with_identity else None
        self.alpha = nn.Parameter(torch.ones(1)) if alpha else None

    def forward(self, x):
        if self.deployed:
            return self.act(self.reparam(x))
        one = self.rbr_1x1(x) if self.alpha is None else self.alpha * self.rbr_1x1(x)
        y = self.rbr_dense(x) + one
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)

    def kernel_bias(self):
        k3, b3 = fuse_conv_bn(self.rbr_dense)
        k1, b1 = fuse_conv_bn(self.rbr_1x1)
        if self.alpha is not None:
            a = self.alpha.double()
            k1, b1 = k1 * a, b1 * a
        kernel, bias = k3 + center_pad(k1, 3), b3 + b1
        if self.rbr_identity is not None:
            kid, bid = fuse_bn(identity_kernel(k3.shape[0], self.geometry["groups"], 3), self.rbr_identity)
            kernel, bias = kernel + kid, bias + bid
        return kernel, bias


# ---------------------------------------------------------------------------
# ACNet
# ---------------------------------------------------------------------------


class ACBlock(Reparam):
    """ACNet (Ding et al., ICCV 2019): kxk + 1xk + kx1 conv-BN summed; the 1xk/kx1 pads are
    (0, k//2)/(k//2, 0) so their taps sit on the square kernel's centre row / column."""

    branches = ("square", "hor", "ver")

    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__()
        p = k // 2
        self.geometry = dict(cin=cin, stride=stride, padding=p, groups=groups)
        self.square = conv_bn(cin, cout, k, stride, p, groups)
        self.hor = nn.Sequential(nn.Conv2d(cin, cout, (1, k), stride, (0, p), groups=groups, bias=False),
                                 nn.BatchNorm2d(cout))
        self.ver = nn.Sequential(nn.Conv2d(cin, cout, (k, 1), stride, (p, 0), groups=groups, bias=False),
                                 nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        if self.deployed:
            return self.act(self.reparam(x))
        return self.act(self.square(x) + self.ver(x) + self.hor(x))

    def kernel_bias(self):
        kernel, bias = fuse_conv_bn(self.square)
        kh, bh = fuse_conv_bn(self.hor)
        kv, bv = fuse_conv_bn(self.ver)
        k = kernel.shape[2]
        return kernel + center_pad(kh, k) + center_pad(kv, k), bias + bh + bv


# ---------------------------------------------------------------------------
# Diverse Branch Block
# ---------------------------------------------------------------------------


class BNAndPadLayer(nn.Module):
    """DBB's BN-then-pad: pads with BN(0) per channel (not 0), so a following unpadded kxk conv
    sees at the border exactly what conv(pad(x)) would, and 1x1 → kxk stays one conv.
    Written with slice assignment as in DBB's code (this is what the exporters see)."""

    def __init__(self, pad, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.pad = pad

    def forward(self, x):
        out = self.bn(x)
        if self.pad > 0:
            bn = self.bn
            value = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)
            p = self.pad
            out = F.pad(out, [p] * 4)
            out[:, :, 0:p, :] = value
            out[:, :, -p:, :] = value
            out[:, :, :, 0:p] = value
            out[:, :, :, -p:] = value
        return out


class IdentityBasedConv1x1(nn.Conv2d):
    """DBB's 1x1 conv parameterized as identity + W (when the 1x1→kxk branch keeps the width)."""

    def __init__(self, channels, groups=1):
        super().__init__(channels, channels, 1, 1, 0, groups=groups, bias=False)
        self.register_buffer("id_tensor", identity_kernel(channels, groups).float(), persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.weight + self.id_tensor, None, 1, 0, 1, self.groups)

    def actual_kernel(self):
        return self.weight + self.id_tensor


class DiverseBranchBlock(Reparam):
    """Diverse Branch Block (Ding et al., CVPR 2021), the four branches of the authors' code:

      origin:   kxk conv-BN
      1x1:      1x1 conv-BN                                         (only when groups < out)
      1x1_kxk:  1x1 conv → BNAndPad → kxk conv (no pad) → BN
      avg:      1x1 conv → BNAndPad → AvgPool(k, s, pad 0) → BN     (groups < out)
                AvgPool(k, s, pad p) → BN                           (depthwise: groups == out)

    The avg branch pads with BNAndPad, like the 1x1_kxk branch: an AvgPool padding zeros after a
    biased BN would not be one conv at the border.
    """

    branches = ("dbb_origin", "dbb_1x1", "dbb_1x1_kxk", "dbb_avg")

    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__()
        p = k // 2
        self.k, self.groups, self.cout = k, groups, cout
        self.geometry = dict(cin=cin, stride=stride, padding=p, groups=groups)
        self.dbb_origin = conv_bn(cin, cout, k, stride, p, groups)
        self.dbb_avg = nn.Sequential()
        if groups < cout:
            self.dbb_avg.add_module("conv", nn.Conv2d(cin, cout, 1, 1, 0, groups=groups, bias=False))
            self.dbb_avg.add_module("bn", BNAndPadLayer(p, cout))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, 0))
            self.dbb_1x1 = conv_bn(cin, cout, 1, stride, 0, groups)
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, p))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(cout))
        internal = cin if groups < cout else 2 * cin          # DBB's default internal width
        self.dbb_1x1_kxk = nn.Sequential()
        if internal == cin:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityBasedConv1x1(cin, groups))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(cin, internal, 1, 1, 0, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", BNAndPadLayer(p, internal))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(internal, cout, k, stride, 0, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        if self.deployed:
            return self.act(self.reparam(x))
        y = self.dbb_origin(x)
        if hasattr(self, "dbb_1x1"):
            y = y + self.dbb_1x1(x)
        y = y + self.dbb_avg(x)
        y = y + self.dbb_1x1_kxk(x)
        return self.act(y)

    def kernel_bias(self):
        k, g = self.k, self.groups
        kernel, bias = fuse_conv_bn(self.dbb_origin)
        if hasattr(self, "dbb_1x1"):
            k1, b1 = fuse_conv_bn(self.dbb_1x1)
            kernel, bias = kernel + center_pad(k1, k), bias + b1
        seq = self.dbb_1x1_kxk
        first = seq.idconv1.actual_kernel() if hasattr(seq, "idconv1") else seq.conv1.weight
        kf, bf = fuse_bn(first, seq.bn1.bn)
        ks, bs = fuse_bn(seq.conv2.weight, seq.bn2)
        kk, bk = compose_1x1_kxk(kf, bf, ks, bs, g)
        ka, ba = fuse_bn(avg_kernel(self.cout, k, g), self.dbb_avg.avgbn)
        if hasattr(self.dbb_avg, "conv"):
            kc, bc = fuse_bn(self.dbb_avg.conv.weight, self.dbb_avg.bn.bn)
            ka, ba = compose_1x1_kxk(kc, bc, ka, ba, g)
        return kernel + kk + ka, bias + bk + ba


# ---------------------------------------------------------------------------
# MobileOne, RepLKNet, FastViT
# ---------------------------------------------------------------------------


class MobileOneBlock(Reparam):
    """MobileOne (Vasu et al., CVPR 2023): n kxk conv-BN branches + 1x1 "scale" conv-BN (k > 1)
    + BN skip (stride 1, in == out). Forward written as in apple/ml-mobileone, including its
    ``scale_out + identity_out`` with a literal 0 for an absent branch."""

    branches = ("rbr_skip", "rbr_scale", "rbr_conv")

    def __init__(self, cin, cout, k, stride=1, groups=1, num_conv_branches=1, use_scale=True, use_act=True):
        super().__init__()
        self.k = k
        self.geometry = dict(cin=cin, stride=stride, padding=k // 2, groups=groups)
        self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_conv = nn.ModuleList(conv_bn(cin, cout, k, stride, k // 2, groups) for _ in range(num_conv_branches))
        self.rbr_scale = conv_bn(cin, cout, 1, stride, 0, groups) if k > 1 and use_scale else None
        self.act = nn.ReLU() if use_act else nn.Identity()

    def forward(self, x):
        if self.deployed:
            return self.act(self.reparam(x))
        identity_out = 0
        if self.rbr_skip is not None:
            identity_out = self.rbr_skip(x)
        scale_out = 0
        if self.rbr_scale is not None:
            scale_out = self.rbr_scale(x)
        out = scale_out + identity_out
        for conv in self.rbr_conv:
            out = out + conv(x)
        return self.act(out)

    def kernel_bias(self):
        g, k = self.geometry["groups"], self.k
        kernel, bias = 0, 0
        if self.rbr_scale is not None:
            ks, bs = fuse_conv_bn(self.rbr_scale)
            kernel, bias = kernel + center_pad(ks, k), bias + bs
        if self.rbr_skip is not None:
            ki, bi = fuse_bn(identity_kernel(self.rbr_skip.num_features, g, k), self.rbr_skip)
            kernel, bias = kernel + ki, bias + bi
        for conv in self.rbr_conv:
            kc, bc = fuse_conv_bn(conv)
            kernel, bias = kernel + kc, bias + bc
        return kernel, bias


class ReparamLargeKernelConv(Reparam):
    """RepLKNet (Ding et al., CVPR 2022): large depthwise conv-BN + small depthwise conv-BN, summed."""

    branches = ("lkb_origin", "small_conv")

    def __init__(self, channels, k, small_k, stride=1):
        super().__init__()
        self.k = k
        self.geometry = dict(cin=channels, stride=stride, padding=k // 2, groups=channels)
        self.lkb_origin = conv_bn(channels, channels, k, stride, k // 2, channels)
        self.small_conv = conv_bn(channels, channels, small_k, stride, small_k // 2, channels)

    def forward(self, x):
        if self.deployed:
            return self.reparam(x)
        out = self.lkb_origin(x)
        out = out + self.small_conv(x)
        return out

    def kernel_bias(self):
        kl, bl = fuse_conv_bn(self.lkb_origin)
        ks, bs = fuse_conv_bn(self.small_conv)
        return kl + center_pad(ks, self.k), bl + bs


class RepLKBlock(nn.Module):
    """RepLKNet's block: x + pw2(ReLU(LK(pw1(BN(x))))). Only the LK conv is re-parameterized by the
    authors' structural_reparam; the pw conv-BN and the pre-BN stay in their deploy model."""

    def __init__(self, channels, dw_channels, k, small_k):
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = nn.Sequential(conv_bn(channels, dw_channels, 1, 1, 0), nn.ReLU())
        self.large_kernel = ReparamLargeKernelConv(dw_channels, k, small_k)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = conv_bn(dw_channels, channels, 1, 1, 0)

    def forward(self, x):
        out = self.pw1(self.prelkb_bn(x))
        out = self.pw2(self.lk_nonlinear(self.large_kernel(out)))
        return x + out


class RepMixer(Reparam):
    """FastViT RepMixer (Vasu et al., ICCV 2023): x + layer_scale·(mixer(x) − norm(x)), where mixer is
    a depthwise MobileOneBlock (kxk conv-BN + 1x1 scale conv-BN + BN skip, no act) and norm a
    MobileOneBlock with only its BN skip. layer_scale has shape (C, 1, 1)."""

    branches = ("norm", "mixer", "layer_scale")

    def __init__(self, dim, k=3):
        super().__init__()
        self.dim, self.k = dim, k
        self.geometry = dict(cin=dim, stride=1, padding=k // 2, groups=dim)
        self.norm = MobileOneBlock(dim, dim, k, groups=dim, num_conv_branches=0, use_scale=False, use_act=False)
        self.mixer = MobileOneBlock(dim, dim, k, groups=dim, use_act=False)
        self.layer_scale = nn.Parameter(1e-5 * torch.ones(dim, 1, 1))

    def forward(self, x):
        if self.deployed:
            return self.reparam(x)
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    def kernel_bias(self):
        km, bm = self.mixer.kernel_bias()
        kn, bn = self.norm.kernel_bias()
        ls = self.layer_scale.double()
        kernel = identity_kernel(self.dim, self.dim, self.k) + ls.unsqueeze(-1) * (km - kn)
        return kernel, ls.flatten() * (bm - bn)


# ---------------------------------------------------------------------------
# RepGhost, RepViT
# ---------------------------------------------------------------------------


class RepGhostModule(Reparam):
    """RepGhost (Chen et al., 2022): primary 1x1 conv-BN-ReLU, then a cheap depthwise conv-BN whose
    re-param branches read the same tensor: a BN-only branch (reparam_bn) and optionally the
    plain identity (reparam_identity). Only the cheap operation is re-parameterized."""

    branches = ("cheap_operation", "fusion_bn")

    def __init__(self, cin, cout, dw_size=3, reparam_identity=False):
        super().__init__()
        self.cout, self.dw = cout, dw_size
        self.geometry = dict(cin=cout, stride=1, padding=dw_size // 2, groups=cout)
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.fusion_bn = nn.ModuleList([nn.BatchNorm2d(cout)] + ([nn.Identity()] if reparam_identity else []))
        self.cheap_operation = conv_bn(cout, cout, dw_size, 1, dw_size // 2, cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        x1 = self.primary_conv(x)
        if self.deployed:
            return self.relu(self.reparam(x1))
        x2 = self.cheap_operation(x1)
        for bn in self.fusion_bn:
            x2 = x2 + bn(x1)
        return self.relu(x2)

    def kernel_bias(self):
        kernel, bias = fuse_conv_bn(self.cheap_operation)
        ident = identity_kernel(self.cout, self.cout, self.dw)
        for bn in self.fusion_bn:
            if isinstance(bn, nn.BatchNorm2d):
                ki, bi = fuse_bn(ident, bn)
            else:
                ki, bi = ident, torch.zeros_like(bias)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias


class RepVGGDW(Reparam):
    """RepViT's token mixer (Wang et al., CVPR 2024): BN(dwconv3x3-BN(x) + dwconv1x1(x) + x),
    the 1x1 depthwise conv with a bias and no BN, as in RepViT's code."""

    branches = ("conv", "conv1", "bn")

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.geometry = dict(cin=dim, stride=1, padding=1, groups=dim)
        self.conv = conv_bn(dim, dim, 3, 1, 1, dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, 1, 0, groups=dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        if self.deployed:
            return self.reparam(x)
        return self.bn((self.conv(x) + self.conv1(x)) + x)

    def kernel_bias(self):
        kernel, bias = fuse_conv_bn(self.conv)
        kernel = kernel + center_pad(self.conv1.weight.double(), 3) + identity_kernel(self.dim, self.dim, 3)
        bias = bias + self.conv1.bias.double()
        k, b = fuse_bn(kernel, self.bn)          # the sum's bias goes through the BN scale too
        return k, b + bias * bn_affine(self.bn)[0]


class Conv2dBN(Reparam):
    """RepViT's Conv2d_BN: a conv-BN that the authors fuse into one conv for deployment."""

    branches = ("c", "bn")

    def __init__(self, cin, cout, k=1, stride=1, groups=1):
        super().__init__()
        self.geometry = dict(cin=cin, stride=stride, padding=k // 2, groups=groups)
        self.c = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.reparam(x) if self.deployed else self.bn(self.c(x))

    def kernel_bias(self):
        return fuse_bn(self.c.weight, self.bn)


class RepViTBlock(nn.Module):
    """RepViT block, stride 1, no SE: RepVGGDW token mixer, then a residual 1x1-GELU-1x1 channel mixer."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.token_mixer = RepVGGDW(dim)
        self.channel_mixer = nn.Sequential(Conv2dBN(dim, hidden), nn.GELU(), Conv2dBN(hidden, dim))

    def forward(self, x):
        x = self.token_mixer(x)
        return x + self.channel_mixer(x)


class BNLinear(nn.Module):
    """RepViT's BN_Linear: BatchNorm1d → Linear."""

    def __init__(self, dim, classes):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.l = nn.Linear(dim, classes)

    def forward(self, x):
        return self.l(self.bn(x))

    def weight_bias(self):
        """BN before a Linear: W·diag(γ/σ), bias W·(β − μγ/σ) + b."""
        w = self.l.weight.double()
        scale, shift = bn_affine(self.bn)
        return w * scale[None, :], w @ shift + self.l.bias.double()


class RepViTClassifier(nn.Module):
    """RepViT's Classfier with distillation head: in eval, (head(x) + head_dist(x)) / 2; fused into
    one Linear for deployment."""

    def __init__(self, dim, classes):
        super().__init__()
        self.classifier = BNLinear(dim, classes)
        self.classifier_dist = BNLinear(dim, classes)

    def forward(self, x):
        if hasattr(self, "fused"):
            return self.fused(x)
        return (self.classifier(x) + self.classifier_dist(x)) / 2

    @torch.no_grad()
    def switch_to_deploy(self):
        w1, b1 = self.classifier.weight_bias()
        w2, b2 = self.classifier_dist.weight_bias()
        self.fused = nn.Linear(w1.shape[1], w1.shape[0])
        self.fused.weight.copy_(((w1 + w2) / 2).float())
        self.fused.bias.copy_(((b1 + b2) / 2).float())
        del self.classifier, self.classifier_dist


# ---------------------------------------------------------------------------
# Ultralytics YOLO pieces (tools/export_detector.py builds a small detector from them)
# ---------------------------------------------------------------------------


class ConvBNAct(Reparam):
    """Ultralytics' Conv: conv (no bias) → BN → SiLU; ``fuse()`` folds the BN into the conv."""

    branches = ("conv", "bn")

    def __init__(self, cin, cout, k=1, stride=1, groups=1, act=True):
        super().__init__()
        self.geometry = dict(cin=cin, stride=stride, padding=k // 2, groups=groups)
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)  # Ultralytics' initialize_weights: eps 1e-3
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.reparam(x) if self.deployed else self.bn(self.conv(x)))

    def kernel_bias(self):
        return fuse_bn(self.conv.weight, self.bn)


class YoloRepVGGDW(Reparam):
    """YOLOv10's RepVGGDW: SiLU(dw7x7 conv-BN(x) + dw3x3 conv-BN(x)); ``fuse()`` gives one 7x7 dw conv."""

    branches = ("conv", "conv1")

    def __init__(self, dim):
        super().__init__()
        self.geometry = dict(cin=dim, stride=1, padding=3, groups=dim)
        self.conv = ConvBNAct(dim, dim, 7, groups=dim, act=False)
        self.conv1 = ConvBNAct(dim, dim, 3, groups=dim, act=False)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.reparam(x) if self.deployed else self.conv(x) + self.conv1(x))

    def kernel_bias(self):
        k7, b7 = self.conv.kernel_bias()
        k3, b3 = self.conv1.kernel_bias()
        return k7 + center_pad(k3, 7), b7 + b3


# ---------------------------------------------------------------------------
# Random "trained" parameters, deploy twins
# ---------------------------------------------------------------------------


@torch.no_grad()
def randomize_(net: nn.Module, seed: int) -> nn.Module:
    """Random non-identity BN statistics and O(1)-preserving weights, so every branch matters.

    Conv/Linear weights ~ N(0, 1/(4·fan_in)) keep activations O(1) through a few blocks of several
    summed branches; BN gets γ ∈ ±[0.5, 1.5], β, μ ~ N(0, 0.3), σ² ∈ [0.5, 2]; PP-YOLOE alphas
    ∈ [0.5, 1.5]; FastViT layer scales ∈ [0.2, 0.6] (a residual, so they add up block after block).
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(0.5 * torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
            m.weight.copy_(sign * uniform(c, 0.5, 1.5))
            m.bias.copy_(0.3 * torch.randn(c, generator=g))
            m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
            m.running_var.copy_(uniform(c, 0.5, 2.0))
        for pname, lo, hi in (("layer_scale", 0.2, 0.6), ("alpha", 0.5, 1.5)):
            p = getattr(m, pname, None)
            if isinstance(p, nn.Parameter):
                p.copy_(uniform(p.shape, lo, hi))
    return net.eval()


def deploy_twin(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every block switched to deploy, outermost first (a RepMixer fuses its
    inner MobileOne blocks itself)."""
    twin = copy.deepcopy(net)

    def walk(module):
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
            return
        for child in module.children():
            walk(child)

    walk(twin)
    return twin.eval()
