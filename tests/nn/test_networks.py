"""Networks of core/nn: shapes, sizes, configs, registry, input checks, gradients, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_sparsefocus.core.nn import (
    NETWORKS,
    DastidarConfig,
    DastidarNet,
    DefocusPredictionNetwork,
    DPNConfig,
    JiangConfig,
    JiangNet,
    LiaoConfig,
    LiaoNet,
    RegionImportanceNetwork,
    RINConfig,
    build_network,
)
from napari_sparsefocus.core.nn._blocks import LayerNorm2d

CONFIGS = {
    "rin": RINConfig,
    "dpn": DPNConfig,
    "liao": LiaoConfig,
    "jiang": JiangConfig,
    "dastidar": DastidarConfig,
}

# Non-default but valid configs (small, so tests stay fast).
SMALL = {
    "rin": RINConfig(width_mult=0.5, grid=(7, 5), output_stride=32, head_channels=32),
    "dpn": DPNConfig(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), layer_scale_init=None),
    "liao": LiaoConfig(width_mult=0.5, last_channels=256),
    "jiang": JiangConfig(stem_channels=8, widths=(8, 16, 32), depths=(1, 2, 1)),
    "dastidar": DastidarConfig(width_mult=0.25, last_channels=256),
}

# (network, input channels) of the documented input.
INPUT_CHANNELS = {"rin": 3, "dpn": 3, "liao": 3, "jiang": 3, "dastidar": 1}

# The first (stem) and last (head) weights of each network.
STEM_HEAD = {
    "rin": ("features.0.conv.weight", "head.3.weight"),
    "dpn": ("stem.0.weight", "fc.weight"),
    "liao": ("features.0.conv.weight", "fc.weight"),
    "jiang": ("stem.0.conv.weight", "fc.weight"),
    "dastidar": ("features.0.conv.weight", "fc.weight"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small tensors: thread synchronisation costs more than it saves, badly so on a busy CPU.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module, x) -> int:
    """Multiply-accumulates of the convolutions and linears for input ``x``."""
    total = [0]

    def conv_hook(m, _inp, out):
        total[0] += out.numel() * (m.weight.numel() // m.out_channels)

    def linear_hook(m, _inp, out):
        total[0] += out.numel() * m.in_features

    handles = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    net.eval()
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return total[0] // x.shape[0]


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("rin", (1, 3, 512, 512), (1, 9, 9)),
        ("rin", (2, 3, 256, 256), (2, 9, 9)),
        ("rin", (1, 3, 301, 257), (1, 9, 9)),
        ("dpn", (2, 3, 224, 224), (2,)),
        ("dpn", (2, 3, 231, 197), (2,)),
        ("liao", (2, 3, 224, 224), (2,)),
        ("liao", (2, 3, 193, 225), (2,)),
        ("jiang", (2, 3, 224, 224), (2,)),
        ("jiang", (2, 2, 224, 224), (2,)),
        ("jiang", (2, 3, 225, 199), (2,)),
        ("dastidar", (2, 1, 224, 224), (2,)),
        ("dastidar", (2, 1, 225, 113), (2,)),
    ],
)
def test_output_shapes(name, shape, expected):
    net = build_network(name).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_rin_grid_and_output_stride():
    net = RegionImportanceNetwork(RINConfig(grid=(7, 5))).eval()
    x = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape[-2:] == (32, 32)  # output stride 16
        assert net.forward_head(feats).shape == (1, 7, 5)
    coarse = RegionImportanceNetwork(RINConfig(output_stride=32)).eval()
    with torch.no_grad():
        assert coarse.forward_features(x).shape[-2:] == (16, 16)
        assert coarse(x).shape == (1, 9, 9)


def test_rin_predict_importance_is_probability_and_restores_mode():
    net = RegionImportanceNetwork()
    net.train()
    w = net.predict_importance(torch.rand(1, 3, 256, 256))
    assert w.shape == (1, 9, 9)
    assert not w.requires_grad
    assert ((w >= 0) & (w <= 1)).all()
    assert net.training  # restored
    net.eval()
    net.predict_importance(torch.rand(1, 3, 256, 256))
    assert not net.training


@pytest.mark.parametrize("name", ["dpn", "liao", "jiang", "dastidar"])
def test_predict_matches_eval_forward_and_restores_mode(name):
    net = build_network(name)
    x = torch.rand(2, INPUT_CHANNELS[name], 64, 64)
    net.train()
    pred = net.predict(x)
    assert net.training
    assert not pred.requires_grad
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(pred, net(x))


def test_forward_features_and_head_compose():
    net = DefocusPredictionNetwork().eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape == (2, 192, 7, 7)
        assert net.forward_head(feats, pre_logits=True).shape == (2, 192)
        torch.testing.assert_close(net.forward_head(feats), net(x))


# ---------------------------------------------------------------- sizes
def test_parameter_counts():
    assert 0.3e6 < count_params(DefocusPredictionNetwork()) < 2e6
    assert 0.3e6 < count_params(RegionImportanceNetwork()) < 3e6
    # MobileNetV3-small (2.5 M with 1000 classes) with a 1-output head.
    assert 1.2e6 < count_params(LiaoNet()) < 2.0e6
    # Dastidar: "approximately 500,000 parameters" at width 0.4.
    assert 0.35e6 < count_params(DastidarNet()) < 0.65e6
    assert count_params(JiangNet()) < 3e6
    # Width and depth are configurable.
    small = DefocusPredictionNetwork(DPNConfig(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)))
    assert count_params(small) < count_params(DefocusPredictionNetwork())
    assert count_params(LiaoNet(LiaoConfig(width_mult=0.5))) < count_params(LiaoNet())


def test_dpn_compute_budget():
    macs = count_macs(DefocusPredictionNetwork(), torch.rand(1, 3, 224, 224))
    assert macs < 0.15e9  # < 0.3 GFLOPs per 224 patch


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_round_trip(name):
    cls = CONFIGS[name]
    for cfg in (cls(), SMALL[name]):
        d = cfg.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert cls.from_dict(d) == cfg
        assert cls.from_dict(json.loads(json.dumps(d))) == cfg
        assert hash(cls.from_dict(d)) == hash(cfg)
    assert cls.from_dict({}) == cls()
    assert cls.from_dict(None) == cls()


def test_config_defaults_are_tuples_and_frozen():
    cfg = DPNConfig()
    assert isinstance(cfg.dims, tuple)
    assert isinstance(RINConfig().blocks[0], tuple)
    with pytest.raises(AttributeError):
        cfg.dims = (1,)  # type: ignore[misc]
    assert DPNConfig.from_dict({"dims": [8, 16, 32, 64]}).dims == (8, 16, 32, 64)
    assert cfg.replace(depths=(1, 1, 1, 1)).depths == (1, 1, 1, 1)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_build_network_rebuilds_identical_architecture(name):
    cfg = SMALL[name]
    net = build_network(name, cfg.to_dict())
    assert net.name == name
    assert net.config == cfg
    assert isinstance(net, NETWORKS[name][0])
    again = build_network(name, json.loads(json.dumps(net.config.to_dict())))
    again.load_state_dict(net.state_dict(), strict=True)
    net.eval()
    again.eval()
    x = torch.rand(2, INPUT_CHANNELS[name], 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), again(x))


def test_default_build_uses_default_config():
    for name, (net_cls, cfg_cls) in NETWORKS.items():
        net = build_network(name)
        assert type(net) is net_cls
        assert net.config == cfg_cls()


def test_unknown_network_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown network 'resnet'") as err:
        build_network("resnet")
    for name in NETWORKS:
        assert name in str(err.value)


def test_unknown_config_key():
    with pytest.raises(ValueError, match="widht"):
        build_network("dpn", {"widht": 3})
    with pytest.raises(ValueError, match="Unknown RINConfig"):
        RINConfig.from_dict({"grid": [9, 9], "depths": [1]})


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (DPNConfig, {"dims": (24, 48), "depths": (1, 1, 1)}, "depths"),
        (DPNConfig, {"dims": (24, 0)}, "dims"),
        (DPNConfig, {"dims": [24, 48.5, 96, 192]}, "dims"),
        (DPNConfig, {"kernel_size": 6}, "kernel_size"),
        (DPNConfig, {"drop_path_rate": 1.0}, "drop_path_rate"),
        (DPNConfig, {"layer_scale_init": -1.0}, "layer_scale_init"),
        (DPNConfig, {"output_scale_um": 0.0}, "output_scale_um"),
        (DPNConfig, {"in_chans": True}, "in_chans"),
        (RINConfig, {"grid": (9,)}, "grid"),
        (RINConfig, {"grid": (9, 0)}, "grid"),
        (RINConfig, {"output_stride": 12}, "output_stride"),
        (RINConfig, {"blocks": ((3, 16, 16, True, "swish", 2),)}, "blocks"),
        (RINConfig, {"blocks": ((4, 16, 16, True, "relu", 2),)}, "blocks"),
        (RINConfig, {"blocks": ()}, "blocks"),
        (RINConfig, {"dropout": 1.0}, "dropout"),
        (LiaoConfig, {"width_mult": 0.0}, "width_mult"),
        (LiaoConfig, {"width_mult": float("nan")}, "width_mult"),
        (JiangConfig, {"widths": ()}, "widths"),
        (JiangConfig, {"widths": (8, 16), "depths": (1,)}, "depths"),
        (DastidarConfig, {"stages": ((6, 24, 2, 3),)}, "stages"),
        (DastidarConfig, {"last_channels": 0}, "last_channels"),
    ],
)
def test_bad_config_raises_naming_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}"):
        cls(**kwargs)
    with pytest.raises(ValueError, match=field):
        cls.from_dict(json.loads(json.dumps(kwargs, allow_nan=True)))


def test_network_rejects_wrong_config_type():
    with pytest.raises(ValueError, match="DPNConfig"):
        DefocusPredictionNetwork(RINConfig())  # type: ignore[arg-type]


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize("name", list(NETWORKS))
def test_bad_input_shapes_raise(name):
    net = build_network(name)
    c = INPUT_CHANNELS[name]
    with pytest.raises(ValueError, match=rf"\(N, {c}, H, W\)"):
        net(torch.rand(c, 64, 64))  # no batch axis
    with pytest.raises(ValueError, match=rf"\(N, {c}, H, W\)"):
        net(torch.rand(1, 4, 64, 64))  # wrong channels
    with pytest.raises(ValueError, match="floating-point"):
        net(torch.zeros(1, c, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="H, W >= "):
        net(torch.rand(1, c, 16, 64))


def test_dastidar_rejects_rgb_with_hint():
    with pytest.raises(ValueError, match="prepare"):
        DastidarNet()(torch.rand(1, 3, 64, 64))


# ---------------------------------------------------------------- gradients, determinism
@pytest.mark.parametrize("name", list(NETWORKS))
def test_gradients_reach_stem_and_head(name):
    net = build_network(name).train()
    x = torch.rand(2, INPUT_CHANNELS[name], 128, 128)
    out = net(x)
    loss = ((out - torch.randn_like(out)) ** 2).mean()
    loss.backward()
    params = dict(net.named_parameters())
    for key in STEM_HEAD[name]:
        grad = params[key].grad
        assert grad is not None, key
        assert torch.isfinite(grad).all(), key
        assert grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", list(NETWORKS))
def test_eval_output_is_deterministic(name):
    net = build_network(name).eval()
    x = torch.rand(2, INPUT_CHANNELS[name], 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


def test_stochastic_depth_only_in_training():
    net = DefocusPredictionNetwork(
        DPNConfig(drop_path_rate=0.5, head_dropout=0.3, layer_scale_init=1.0)
    )
    x = torch.rand(4, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))


def test_initialisation_is_bias_safe():
    dpn = DefocusPredictionNetwork()
    assert torch.count_nonzero(dpn.fc.bias) == 0
    assert dpn.fc.weight.std() < 0.03
    for m in dpn.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1)
            assert torch.count_nonzero(m.bias) == 0
    for name in ("rin", "liao", "jiang", "dastidar"):
        for m in build_network(name).modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                assert torch.count_nonzero(m.bias) == 0


def test_layernorm2d_matches_per_pixel_layernorm():
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    expected = nn.functional.layer_norm(
        x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, ln.eps
    ).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected)


# ---------------------------------------------------------------- input preparation
def test_jiang_prepare_channels_and_constant_spectrum():
    x = torch.rand(2, 3, 64, 48)
    prepared = JiangNet.prepare(x)
    assert prepared.shape == (2, 2, 64, 48)
    gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(prepared[:, 0], gray)
    assert prepared[:, 1].min() >= 0
    assert prepared[:, 1].max() <= 1 + 1e-6

    const = torch.full((1, 3, 64, 48), 0.6)
    spec = JiangNet.prepare(const)[0, 1]
    assert spec[32, 24] == pytest.approx(1.0, abs=1e-5)  # zero frequency at the centre
    off_centre = spec.clone()
    off_centre[32, 24] = 0
    assert off_centre.abs().max() < 1e-3


def test_jiang_prepare_sharp_vs_blurred_spectrum():
    # More high-frequency energy for a sharp pattern than for its blurred copy.
    sharp = (torch.rand(1, 1, 64, 64) > 0.5).float().repeat(1, 3, 1, 1)
    blurred = nn.functional.avg_pool2d(sharp, 5, stride=1, padding=2, count_include_pad=False)
    hf = []
    for img in (sharp, blurred):
        spec = JiangNet.prepare(img)[0, 1]
        yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
        ring = ((yy - 32) ** 2 + (xx - 32) ** 2) > 16**2
        hf.append(spec[ring].mean())
    assert hf[0] > hf[1]


def test_jiang_forward_accepts_rgb_or_prepared():
    net = JiangNet().eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(JiangNet.prepare(x)))


def test_dastidar_prepare():
    a = torch.rand(2, 3, 64, 64)
    same = DastidarNet.prepare(a, a)
    assert same.shape == (2, 1, 64, 64)
    assert torch.count_nonzero(same) == 0

    b = torch.rand(2, 3, 64, 64)
    diff = DastidarNet.prepare(a, b)
    assert diff.mean(dim=(1, 2, 3)).abs().max() < 1e-5
    assert torch.allclose(diff.std(dim=(1, 2, 3), correction=0), torch.ones(2), atol=0.05)
    # Antisymmetric in the shots.
    torch.testing.assert_close(DastidarNet.prepare(b, a), -diff, atol=1e-5, rtol=1e-5)

    # The 3×3 median filter removes an isolated hot pixel.
    flat = torch.full((1, 3, 32, 32), 0.3)
    spiked = flat.clone()
    spiked[:, :, 20, 30] = 1.0
    assert torch.count_nonzero(DastidarNet.prepare(flat, spiked)) == 0

    with pytest.raises(ValueError, match="same shape"):
        DastidarNet.prepare(a, b[:, :, :32])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        DastidarNet.prepare(a[:, :1], b[:, :1])

    net = DastidarNet().eval()
    with torch.no_grad():
        assert net(DastidarNet.prepare(a, b)).shape == (2,)


# ---------------------------------------------------------------- training
def test_dpn_overfits_tiny_batch():
    net = DefocusPredictionNetwork(DPNConfig(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)))
    x = torch.rand(8, 3, 64, 64)
    y = torch.randn(8) * 2.0  # µm
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    with torch.no_grad():
        initial = torch.mean((net(x) - y) ** 2).item()
    for _ in range(60):
        loss = torch.mean((net(x) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        final = torch.mean((net(x) - y) ** 2).item()
    assert final < initial / 5


# --------------------------------------------------------------------------- colour branch
def test_dpn_colour_branch_descriptor_is_a_chromatic_sharpness_measure():
    from scipy import ndimage

    from napari_sparsefocus.core.nn import DefocusPredictionNetwork, DPNConfig

    cfg = DPNConfig(dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), colour_sharpness_scales=(1, 2, 4))
    assert DPNConfig.from_dict(cfg.to_dict()) == cfg
    net = DefocusPredictionNetwork(cfg).eval()
    rng = np.random.default_rng(0)
    base = rng.random((64, 64))
    # red blurred more than blue: the red channel is the less sharp one
    img = np.stack([ndimage.gaussian_filter(base, s) for s in (2.0, 1.0, 0.5)])
    x = torch.tensor(img[None], dtype=torch.float32)
    d = net.colour.descriptor(x).reshape(4, 3)  # (scales + variance, channels)
    assert d[0, 0] < d[0, 1] < d[0, 2]
    # brightness scales every channel alike: each log shifts by 2 log(a)
    d2 = net.colour.descriptor(1.5 * x).reshape(4, 3)
    assert torch.allclose(d2 - d, torch.full_like(d, 2 * np.log(1.5)), atol=1e-4)
    out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2,)
    with pytest.raises(ValueError, match="colour"):
        net.forward_head(net.forward_features(torch.rand(1, 3, 64, 64)))
    with pytest.raises(ValueError, match="colour_sharpness_scales"):
        DPNConfig(colour_sharpness_scales=(0,))


def test_dpn_sign_magnitude_head_multiplies_magnitude_and_side():
    from napari_sparsefocus.core.nn import DefocusPredictionNetwork, DPNConfig

    cfg = DPNConfig(
        dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), sign_magnitude_head=True, output_scale_um=10.0
    )
    net = DefocusPredictionNetwork(cfg).eval()
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.tensor([1.0, -0.5]))  # (a, b)
    out = net(torch.rand(3, 3, 64, 64))
    want = 10.0 * np.log1p(np.e) * np.tanh(2.0 * -0.5)  # softplus(a) tanh(side_gain b)
    assert torch.allclose(out, torch.full((3,), want, dtype=out.dtype), atol=1e-5)
    with pytest.raises(ValueError, match="sign_magnitude_head"):
        DPNConfig(sign_magnitude_head=1)
