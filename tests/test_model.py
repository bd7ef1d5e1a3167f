"""DAS²F network: parameter counts of the released model, shapes, gradients, ablation switches."""
import pytest
import torch

from das2f.models import DAS2F, load_reference_state_dict
from das2f.models.cmda import CMDACore
from das2f.models.reference import to_reference_keys
from das2f.models.ss2d import SS2D, scan_sequences


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_released_models():
    assert n_params(DAS2F(stages=2)) == 17_416_531
    assert n_params(DAS2F(stages=1)) == 17_107_315


def inputs(b=2, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, 16, 16, generator=g), torch.randn(b, 1, 64, 64, generator=g)


@pytest.mark.parametrize("backbone,fusion,swap,dominant", [
    ("spvm", "aalf", True, True), ("vmamba", "sum", False, True), ("cnn", "concat", True, False),
    ("spvm", "mean", True, True)])
def test_every_parameter_gets_a_gradient(backbone, fusion, swap, dominant):
    torch.manual_seed(0)
    m = DAS2F(num_classes=5, stages=2, backbone=backbone, fusion=fusion, swap=swap, dominant=dominant)
    out = m(*inputs())
    assert out.shape == (2, 5)
    out.square().sum().backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_three_ms_bands_and_three_stages():
    m = DAS2F(ms_channels=3, num_classes=5, stages=3).eval()
    assert m(*inputs(c=3)).shape == (2, 5)


def test_bad_shapes_raise_with_expected_and_received():
    m = DAS2F()
    ms, pan = inputs()
    with pytest.raises(ValueError, match=r"pan must be \(B=2, 1, 64, 64\) \(4x the MS patch\), got \(2, 1, 32, 32\)"):
        m(ms, pan[..., :32, :32])
    with pytest.raises(ValueError, match=r"ms must be \(B, 4, 16, 16\), got \(2, 3, 16, 16\)"):
        m(ms[:, :3], pan)
    with pytest.raises(ValueError, match="backbone must be one of"):
        DAS2F(backbone="resnet")
    with pytest.raises(ValueError, match="fusion must be one of"):
        DAS2F(fusion="max")


def _independent_copies(core):
    """Two single-modality SS2D modules with the core's weights (shared out_norm)."""
    out = []
    for branch in (core.ms, core.pan):
        s = SS2D()
        s.branch.load_state_dict(branch.state_dict())
        s.out_norm.load_state_dict(core.out_norm.state_dict())
        out.append(s.eval())
    return out


def test_cmda_without_swap_equals_two_independent_branches():
    torch.manual_seed(1)
    core = CMDACore(swap=False).eval()
    ms, pan = torch.randn(2, 16, 16, 64), torch.randn(2, 16, 16, 64)
    ss_ms, ss_pan = _independent_copies(core)
    with torch.no_grad():
        a, b = core(ms, pan)
        torch.testing.assert_close(a, ss_ms(ms))
        torch.testing.assert_close(b, ss_pan(pan))


def test_cmda_swap_scans_each_modality_with_the_others_parameters():
    torch.manual_seed(2)
    core = CMDACore(swap=True).eval()
    ms, pan = torch.randn(2, 16, 16, 64), torch.randn(2, 16, 16, 64)
    with torch.no_grad():
        a, _ = core(ms, pan)
        xs_ms, z_ms = core.ms.prepare(ms)
        xs_pan, _ = core.pan.prepare(pan)
        expected = core.ms.finish(scan_sequences(xs_ms, core.pan.ssm(xs_pan), "torch"), z_ms, core.out_norm)
        torch.testing.assert_close(a, expected)
        ss_ms, _ = _independent_copies(core)
        assert (a - ss_ms(ms)).abs().max() > 1e-3  # the swap changes the result


# The authors' key layout, from architecture.md's appendix: (key, shape) for keys with a stated shape.
APPENDIX_SHAPES = {
    "R1.conv.weight": (4, 1, 1, 1),
    "scan_161664_ms.0.weight": (64, 4, 4, 4),
    "mamba_ms_1.mamba.x_proj_weight": (4, 72, 64),
    "mamba_pan_2.mamba.A_logs": (256, 24),
    "mamba_ms_2.mamba.Ds": (256,),
    "mamba_ms_1.mamba.dt_projs_weight": (4, 64, 24),
    "mamba_pan_1.mamba.dt_projs_bias": (4, 64),
    "mamba_ms_1.mamba.in_proj.weight": (64, 64),
    "mamba_ms_1.mamba.conv2d.weight": (4, 1, 3, 3),
    "mamba_ms_1.mamba.out_proj.weight": (64, 64),
    "mamba_ms_1.mamba.patch.0.weight": (64, 4, 4, 4),
    "mamba_ms_1.mlp.0.weight": (256, 64),
    "mamba_ms_1.mlp.2.weight": (64, 256),
    "cromamba_2.cromamba.x_proj_weight_pan": (4, 72, 64),
    "FusionBlock2.fusion_1.get_G.mlp.weight": (16, 32),
    "FusionBlock3.norm.weight": (16,),
    "classifier.classifier_1.weight": (1024, 16384),
    "classifier.classifier_2.weight": (11, 1024),
}
APPENDIX_NAMES = [
    "mamba_pan_1.mamba.patch.1.num_batches_tracked", "cromamba_1.norm.bias", "cromamba_1.cromamba.A_logs",
    "cromamba_1.cromamba.Ds_pan", "cromamba_1.cromamba.in_proj_pan.weight", "cromamba_1.cromamba.conv2d_pan.bias",
    "cromamba_1.cromamba.out_proj_pan.weight", "cromamba_1.cromamba.patch_ms.1.running_var",
    "cromamba_1.cromamba.patch_pan.0.bias", "cromamba_1.cromamba.out_norm.weight", "cromamba_1.mlp_pan.2.bias",
    "scan_161664_pan.2.bias", "mamba_ms_2.norm.weight", "mamba_ms_2.mamba.out_norm.bias",
]


def test_reference_layout_matches_the_appendix():
    keys = to_reference_keys(DAS2F(stages=2))
    for k, shape in APPENDIX_SHAPES.items():
        assert tuple(keys[k].shape) == shape, k
    for k in APPENDIX_NAMES:
        assert k in keys, k
    assert not any(k.startswith(("stages", "fusions", "embed")) for k in keys)
    one = to_reference_keys(DAS2F(stages=1))
    assert "FusionBlock.norm.weight" in one and not any(k.startswith(("mamba_ms_2", "cromamba_2", "FusionBlock2")) for k in one)
    assert len(keys) == len(DAS2F().state_dict())


@pytest.mark.parametrize("stages", [1, 2])
def test_load_reference_state_dict_reproduces_the_function(stages):
    torch.manual_seed(3)
    src = DAS2F(stages=stages).eval()
    reference = {k: v.clone() for k, v in to_reference_keys(src).items()}
    dst = DAS2F(stages=stages).eval()
    load_reference_state_dict(dst, reference)
    ms, pan = inputs()
    with torch.no_grad():
        torch.testing.assert_close(dst(ms, pan), src(ms, pan), rtol=1e-5, atol=1e-5)


def test_load_reference_state_dict_lists_bad_keys():
    sd = to_reference_keys(DAS2F(stages=1))
    sd.pop("cromamba_1.cromamba.Ds_pan")
    sd["cromamba_1.extra.weight"] = torch.zeros(1)
    expected = r"missing keys \['cromamba_1.cromamba.Ds_pan'\].*unexpected keys \['cromamba_1.extra.weight'\]"
    with pytest.raises(KeyError, match=expected):
        load_reference_state_dict(DAS2F(stages=1), sd)
    sd = to_reference_keys(DAS2F(stages=1))
    sd["classifier.classifier_2.weight"] = torch.zeros(5, 1024)
    with pytest.raises(ValueError, match=r"classifier.classifier_2.weight.*\(5, 1024\), expected \(11, 1024\)"):
        load_reference_state_dict(DAS2F(stages=1), sd)


def test_forward_flops_counts_without_touching_the_network():
    """The model summary's FLOPs (about 0.2 GFLOP per sample for the 1-stage model): counting changes no
    state (BatchNorm's running statistics stayed updated by the count once: a resumed run then differed)."""
    import copy

    from das2f.models import DAS2F

    net = DAS2F(stages=1, num_classes=8).train()
    before = copy.deepcopy(net.state_dict())
    flops = net.forward_flops()
    assert 0.15e9 < flops < 0.25e9
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert DAS2F(stages=2, num_classes=8).forward_flops() > 1.5 * flops
