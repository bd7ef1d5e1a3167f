"""Cross-scan / cross-merge index bookkeeping, the token rearrangements, SS2D against its specification."""
import pytest
import torch
import torch.nn.functional as F

from das2f.models import selective_scan
from das2f.models.fusion import tokens_to_subpixels
from das2f.models.ss2d import SS2D, SpacePreservingConv, cross_merge, cross_scan, tokens_to_image


def test_cross_scan_orders():
    h, w = 3, 4
    x = torch.arange(h * w, dtype=torch.float32).view(1, h * w, 1).repeat(2, 1, 1)  # value = row-major index
    x[1] += 100  # second sample: the batch axis must stay apart
    xs = cross_scan(x, h, w)
    assert xs.shape == (h * w, 2, 4, 1)  # time-major (L, B, 4, D)
    rows = list(range(h * w))
    cols = [r * w + c for c in range(w) for r in range(h)]  # column-major walk
    for b in range(2):
        for k, order in enumerate((rows, cols, rows[::-1], cols[::-1])):
            assert (xs[:, b, k, 0] - 100 * b).tolist() == order


def test_merge_of_scan_is_four_times_identity_and_adjoint():
    x = torch.randn(2, 35, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(cross_merge(cross_scan(x, 5, 7), 5, 7), 4 * x)
    # merge is the adjoint of scan: <scan(x), y> == <x, merge(y)>
    y = torch.randn(35, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    lhs = (cross_scan(x, 5, 7) * y).sum()
    rhs = (x * cross_merge(y, 5, 7)).sum()
    torch.testing.assert_close(lhs, rhs)
    # and each one's backward is the other (both are hand-written autograd Functions)
    assert torch.autograd.gradcheck(lambda t: cross_scan(t, 5, 7), (x,))
    assert torch.autograd.gradcheck(lambda t: cross_merge(t, 5, 7), (y,))


def test_cross_scan_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match=r"expected \(B, 12, D\) for a 3x4 grid, got \(1, 10, 2\)"):
        cross_scan(torch.zeros(1, 10, 2), 3, 4)


def _ss2d_as_specified(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D written out literally from architecture.md section 2, in mamba-ssm's (B, D, L) layout, with
    flips and transposes for the cross-scan and the reference scan: the slow, obvious version."""
    br = m.branch
    b, h, w, d = x.shape
    z = F.silu(br.in_proj(x))
    if isinstance(br.local, SpacePreservingConv):  # SPVM: conv on the sub-pixel image, patch conv + BN
        feat = br.local.patch_embed(F.silu(br.local.conv2d(tokens_to_image(x, 4))))  # (B, D, H, W)
    else:  # plain VMamba: depthwise conv on the token grid
        feat = F.silu(br.local.conv2d(x.permute(0, 3, 1, 2)))
    rows, cols = feat.flatten(2), feat.transpose(2, 3).flatten(2)
    xs = torch.stack((rows, cols, rows.flip(-1), cols.flip(-1)), dim=1)  # (B, 4, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, br.ssm.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [br.ssm.dt_rank, br.ssm.d_state, br.ssm.d_state], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, br.ssm.dt_projs_weight)
    ys = selective_scan(xs.reshape(b, 4 * d, h * w), dts.reshape(b, 4 * d, h * w), -torch.exp(br.ssm.A_logs), Bs, Cs,
                        D=br.ssm.Ds, delta_bias=br.ssm.dt_projs_bias.reshape(-1), delta_softplus=True,
                        backend="reference").view(b, 4, d, h * w)
    back = lambda t: t.view(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)  # noqa: E731 - column order -> rows
    y = ys[:, 0] + ys[:, 2].flip(-1) + back(ys[:, 1]) + back(ys[:, 3].flip(-1))
    y = m.out_norm(y.transpose(1, 2)).view(b, h, w, d)
    return br.out_proj(y * z)


@pytest.mark.parametrize("space_preserving,backend", [(True, "torch"), (False, "torch"), (True, "reference")])
def test_ss2d_equals_its_specification_in_float64(space_preserving, backend):
    """The time-major SS2D (gathers, einsums on (L, B, 4, D), fused scan) against the literal version,
    outputs and every parameter's gradient, in float64 where both should agree to rounding. With the
    reference backend, SS2D's sequences reach the scan as mamba-ssm-layout views, as on a GPU."""
    torch.manual_seed(0)
    m = SS2D(d_model=32, d_state=6, dt_rank=4, space_preserving=space_preserving, scan_backend=backend)
    m = m.double().train()
    x = torch.randn(3, 5, 7, 32, dtype=torch.float64)
    y, y_ref = m(x), _ss2d_as_specified(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(y)
    params = [p for p in m.parameters()]
    g = torch.autograd.grad((y * w).sum(), params)
    g_ref = torch.autograd.grad((y_ref * w).sum(), params)
    for (name, _), a, r in zip(m.named_parameters(), g, g_ref):
        # the patch conv's bias feeds a training-mode BatchNorm: its true gradient is 0, both sides are noise
        if name.endswith("patch_embed.0.bias"):
            assert r.abs().max() < 1e-12 and a.abs().max() < 1e-12
            continue
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12 * r.abs().max().item(), msg=name)


def test_tokens_to_image_places_subpixels():
    # token (i, j) with vector v: channel c, sub-pixel (a, b) is v[c*16 + a*4 + b] at pixel (4i+a, 4j+b)
    x = torch.randn(2, 3, 5, 64)
    img = tokens_to_image(x, 4)
    assert img.shape == (2, 4, 12, 20)
    for (i, j, c, a, b) in [(0, 0, 0, 0, 0), (2, 4, 3, 3, 1), (1, 2, 2, 0, 3)]:
        assert img[1, c, 4 * i + a, 4 * j + b] == x[1, i, j, c * 16 + a * 4 + b]


def test_tokens_to_subpixels_layout():
    x = torch.randn(1, 16, 16, 64)
    f = tokens_to_subpixels(x)
    assert f.shape == (1, 1024, 16)
    # pixel (2h+a, 2w+b) of the 32x32 grid holds channel c = x[h, w, c*4 + a*2 + b]
    for (h, w, a, b, c) in [(0, 0, 0, 0, 0), (5, 9, 1, 0, 7), (15, 15, 1, 1, 15)]:
        assert f[0, (2 * h + a) * 32 + 2 * w + b, c] == x[0, h, w, c * 4 + a * 2 + b]
