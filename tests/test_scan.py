"""The torch and cpu scan backends against the float64 sequential reference: outputs and every gradient."""
import logging

import numpy as np
import pytest
import torch

from das2f.models import selective_scan
from das2f.ops.scan import resolve_backend, selective_scan_time_major, time_major_arguments

# float32 chunked scan vs float64 loop: observed errors ~1e-6 relative; 1e-4 leaves room for
# accumulation over 300 steps without hiding a wrong formula (those give errors of order 1).
RTOL = 1e-4


def make_inputs(b, d, g, n, length, regime, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    # "init": delta ~ 1e-3..0.1 as after Mamba init; "stress": delta = softplus(N(0,1)) ~ 0.1..4
    # with |A| up to N+1 -- a chunked exp(cumsum) closed form overflows here, ours must not.
    delta = r(b, d, length) * 0.5 - 4.0 if regime == "init" else r(b, d, length)
    A = -(torch.rand(d, n, generator=gen, dtype=torch.float64) * n + 0.5)
    return dict(u=r(b, d, length), delta=delta, A=A, B=r(b, g, n, length), C=r(b, g, n, length),
                D=r(d), delta_bias=0.1 * r(d))


@pytest.mark.parametrize("shape", [(2, 8, 2, 4, 37), (3, 16, 4, 5, 50), (1, 4, 1, 3, 16), (2, 8, 8, 6, 301)])
@pytest.mark.parametrize("regime", ["init", "stress"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_backend_matches_reference(shape, regime, backend):
    x64 = make_inputs(*shape, regime=regime, seed=sum(shape))
    x64 = {k: v.requires_grad_() for k, v in x64.items()}
    x32 = {k: v.detach().float().requires_grad_() for k, v in x64.items()}
    y_ref = selective_scan(**x64, delta_softplus=True, backend="reference")
    y = selective_scan(**x32, delta_softplus=True, backend=backend)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    torch.testing.assert_close(y.double(), y_ref, rtol=RTOL, atol=RTOL * y_ref.abs().max().item())
    w = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * w).sum(), list(x64.values()))
    g = torch.autograd.grad((y * w.float()).sum(), list(x32.values()))
    for name, a, b in zip(x64, g_ref, g):
        assert torch.isfinite(b).all(), name
        err = (a - b.double()).abs().max() / a.abs().max()
        assert err < RTOL, f"gradient of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("grad_of", [None, "u", "A", "D"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_inference_path_equals_training_path(grad_of, backend):
    """Without gradients the scan keeps only its running state; the output must not change, and
    a gradient through any single input must still keep the chunk checkpoints it needs."""
    x = {k: v.float() for k, v in make_inputs(2, 8, 2, 4, 37, regime="stress", seed=3).items()}
    with torch.no_grad():
        y_inf = selective_scan(**x, delta_softplus=True, backend=backend)
    xs = {k: v.clone().requires_grad_(k == grad_of) for k, v in x.items()}
    y = selective_scan(**xs, delta_softplus=True, backend=backend)
    torch.testing.assert_close(y_inf, y.detach(), rtol=0, atol=0)
    if grad_of is not None:
        xr = {k: v.double().requires_grad_(k == grad_of) for k, v in x.items()}
        (g_ref,) = torch.autograd.grad(selective_scan(**xr, delta_softplus=True, backend="reference").sum(), xr[grad_of])
        (g,) = torch.autograd.grad(y.sum(), xs[grad_of])
        assert (g.double() - g_ref).abs().max() / g_ref.abs().max() < RTOL


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_without_optional_terms_and_softplus(backend):
    x = make_inputs(2, 8, 4, 4, 20, "init", 0)
    x["delta"] = torch.rand_like(x["delta"]) * 0.1  # positive without softplus
    ref = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="reference")
    x32 = [x[k].float().requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    got = selective_scan(*x32, backend=backend)
    torch.testing.assert_close(got.double(), ref, rtol=RTOL, atol=1e-5)
    # gradients without D, delta_bias and softplus, against the torch backend
    got.square().sum().backward()
    x32t = [t.detach().clone().requires_grad_() for t in x32]
    selective_scan(*x32t, backend="torch").square().sum().backward()
    for a, b in zip(x32, x32t):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * b.grad.abs().max().item())


def test_reference_matches_hand_computation():
    # one channel, one state, two steps: h1 = d1 b1 u1, h2 = e^{d2 a} h1 + d2 b2 u2
    u = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[[3.0, 4.0]]]], dtype=torch.float64)
    C = torch.tensor([[[[5.0, 6.0]]]], dtype=torch.float64)
    h1 = 0.5 * 3 * 1
    h2 = torch.exp(torch.tensor(-0.5)).item() * h1 + 0.25 * 4 * 2
    for backend in ("reference", "torch", "cpu"):
        y = selective_scan(u, delta, A, B, C, D=torch.tensor([0.5], dtype=torch.float64), backend=backend)
        torch.testing.assert_close(y.flatten().double(), torch.tensor([5 * h1 + 0.5, 6 * h2 + 1.0], dtype=torch.float64))


@pytest.mark.parametrize("backend", ["torch", "cpu", "reference"])
def test_time_major_entry_equals_the_mamba_layout(backend):
    """SS2D's entry point (time-major in and out) computes the same scan, outputs and gradients."""
    x = {k: v.float().requires_grad_() for k, v in make_inputs(2, 8, 2, 4, 37, "stress", 5).items()}
    y = selective_scan(**x, delta_softplus=True, backend=backend)
    y_tm = selective_scan_time_major(**time_major_arguments(x), delta_softplus=True, backend=backend)
    assert y_tm.shape == (37, 2, 8)
    torch.testing.assert_close(y_tm.permute(1, 2, 0), y, rtol=1e-6, atol=1e-6)
    w = torch.randn_like(y)
    g = torch.autograd.grad((y * w).sum(), list(x.values()))
    g_tm = torch.autograd.grad((y_tm.permute(1, 2, 0) * w).sum(), list(x.values()))
    for name, a, b in zip(x, g, g_tm):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item(), msg=name)


def test_bad_shapes_raise():
    x = make_inputs(2, 8, 2, 4, 10, "init", 0)
    with pytest.raises(ValueError, match=r"B must be \(B=2, G, N=4, L=10\).*got \(2, 3, 4, 10\)"):
        selective_scan(x["u"], x["delta"], x["A"], torch.randn(2, 3, 4, 10), x["C"])
    with pytest.raises(ValueError, match=r"C must be \(B=2, G, N=4, L=10\).*got \(4, 10\)"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], torch.randn(4, 10))  # not 4-D: a ValueError too
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan(x["u"], x["delta"][..., :5], x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="scan_backend must be one of"):
        selective_scan(**x, backend="cuda")
    tm = time_major_arguments(x)
    with pytest.raises(ValueError, match=r"C must be \(L=10, B=2, G, N=4\).*got \(2, 10, 2, 4\)"):
        selective_scan_time_major(**{**tm, "C": x["C"].permute(0, 3, 1, 2)})  # batch-major by mistake
    with pytest.raises(ValueError, match=r"A must be \(D=8, N\), got \(4, 4\)"):
        selective_scan_time_major(**{**tm, "A": x["A"][:4]})


def test_auto_uses_the_cpu_backend_off_gpu_and_says_why(caplog):
    caplog.set_level("INFO", logger="das2f.ops.scan")
    from das2f.ops import scan

    scan._announced.clear()
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert "selective scan backend: cpu (tensors on cpu" in caplog.text
    with pytest.raises(RuntimeError, match="needs CUDA tensors|does not import"):
        x = make_inputs(1, 4, 1, 2, 3, "init", 0)
        selective_scan(**x, backend="mamba_ssm")


def test_deterministic_algorithms_keep_auto_off_mamba_ssm_on_cuda(caplog, monkeypatch):
    """mamba-ssm's CUDA backward sums dA with atomic adds: under deterministic algorithms (deterministic=true) auto
    picks the triton kernels on CUDA, and an explicit mamba_ssm is run with a warning that says why."""
    from das2f.ops import scan

    if scan.scan_triton.IMPORT_ERROR is not None:
        pytest.skip(f"triton does not import: {scan.scan_triton.IMPORT_ERROR}")
    monkeypatch.setattr(scan, "_mamba_ssm_fn", lambda: (object(), "mamba-ssm imports"))
    cuda = torch.device("cuda")
    caplog.set_level("INFO", logger="das2f.ops.scan")
    scan._announced.clear()
    assert resolve_backend("auto", cuda) == "mamba_ssm"
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert resolve_backend("auto", cuda) == "triton"
        assert resolve_backend("mamba_ssm", cuda) == "mamba_ssm"
    finally:
        torch.use_deterministic_algorithms(before)
    assert "deterministic algorithms are on: mamba-ssm's backward sums some gradients with atomic adds" in caplog.text
    assert any(r.levelname == "WARNING" and "atomic adds" in r.message for r in caplog.records)


def test_the_cpu_kernels_take_their_records_arguments(monkeypatch):
    """One record (scan_cpu._ARGS) gives each numba kernel's argument order, its compiled signature and the calls'
    arguments; a kernel whose parameters drift from its record fails the import-time check by name."""
    from das2f.ops import scan_cpu

    if scan_cpu.IMPORT_ERROR is not None:
        pytest.skip(scan_cpu.IMPORT_ERROR)
    scan_cpu._check_records()
    scan_cpu._compiled()
    for name, args in scan_cpu._ARGS.items():  # compiled from the record: one signature, its types then lo and hi
        (compiled,) = getattr(scan_cpu, name).signatures
        assert len(compiled) == len(args) + 2
    shifted = scan_cpu._ARGS["_forward_kernel"]
    monkeypatch.setitem(scan_cpu._ARGS, "_forward_kernel", shifted[1:] + shifted[:1])
    with pytest.raises(RuntimeError, match=r"_forward_kernel takes \('u', 'delta'.*its record \(_ARGS\) says \('delta'"):
        scan_cpu._check_records()


# --------------------------------------------------------------------------- the cpu backend's own cases
def test_exp2_polynomial_is_float32_exact():
    from das2f.ops.scan_cpu import exp2_array

    x = np.linspace(-125.9, 127.0, 1_000_003, dtype=np.float32)
    got = np.empty_like(x)
    exp2_array(x, got)
    exact = np.exp2(x.astype(np.float64))
    assert np.max(np.abs(got - exact) / exact) < 2e-7
    tiny = np.array([-126.5, -300.0, -1e30], dtype=np.float32)  # below float32's normal range: 2**-126, not garbage
    exp2_array(tiny, out := np.empty_like(tiny))
    assert np.all(out == np.float32(2.0**-126))


def test_cpu_backend_result_does_not_depend_on_the_thread_count():
    """Blocks are split over threads, each computed alone: bit-identical results with 1 or 3 threads."""
    x = {k: v.float().requires_grad_() for k, v in make_inputs(3, 16, 4, 5, 50, "stress", 1).items()}
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            y = selective_scan(**x, delta_softplus=True, backend="cpu")
            results.append([y, *torch.autograd.grad(y.square().sum(), list(x.values()))])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_cpu_backend_takes_bf16_inputs_with_a_float32_state():
    """bfloat16 inputs (what bf16-mixed feeds it): y and gradients in bfloat16, computed like the torch
    backend's float32 state (the two differ by bfloat16 rounding at most)."""
    x = {k: v.to(torch.bfloat16) for k, v in make_inputs(2, 8, 2, 4, 37, "stress", 2).items()}
    out = {}
    for backend in ("torch", "cpu"):
        xs = {k: v.clone().requires_grad_() for k, v in x.items()}
        y = selective_scan(**xs, delta_softplus=True, backend=backend)
        out[backend] = [y, *torch.autograd.grad(y.float().square().sum(), list(xs.values()))]
    for name, a, b in zip(["y", *x], out["cpu"], out["torch"]):
        assert a.dtype == torch.bfloat16, name
        assert (a.float() - b.float()).abs().max() <= 2 * 2**-8 * b.float().abs().max(), name


def test_cpu_backend_falls_back_to_torch_and_says_why(caplog, monkeypatch):
    from das2f.ops import scan, scan_cpu

    caplog.set_level("INFO", logger="das2f.ops.scan")
    scan._announced.clear()
    x = make_inputs(2, 8, 2, 4, 10, "init", 0)  # float64: the cpu kernels' state is float32
    torch.testing.assert_close(selective_scan(**x, backend="cpu"), selective_scan(**x, backend="torch"))
    assert "the cpu backend cannot run: float64 inputs" in caplog.text
    monkeypatch.setattr(scan_cpu, "IMPORT_ERROR", "numba does not import (ImportError: test)")
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "numba does not import (ImportError: test)" in warned[-1].getMessage()


def test_cpu_backend_network_logits_and_training_step_equal_torch():
    """The whole network: logits and every parameter's gradient of one step with the cpu backend equal the
    torch backend's (two float32 computations of the same recurrence, summed in other orders)."""
    from das2f.models import DAS2F

    torch.manual_seed(0)
    nets = {b: DAS2F(stages=1, d_state=6, dt_rank=4, scan_backend=b) for b in ("torch", "cpu")}
    nets["cpu"].load_state_dict(nets["torch"].state_dict())
    ms, pan, label = torch.randn(6, 4, 16, 16), torch.randn(6, 1, 64, 64), torch.randint(0, 11, (6,))
    logits = {}
    for b, net in nets.items():
        logits[b] = net(ms, pan)
        torch.nn.functional.cross_entropy(logits[b], label).backward()
    torch.testing.assert_close(logits["cpu"], logits["torch"], rtol=1e-5, atol=1e-5 * logits["torch"].abs().max().item())
    floor = 1e-6 * max(p.grad.abs().max() for p in nets["torch"].parameters())
    for (name, p), q in zip(nets["torch"].named_parameters(), nets["cpu"].parameters()):
        assert (q.grad - p.grad).abs().max() <= 1e-4 * p.grad.abs().max() + floor, name
