"""CUDA-only (`make gpu-check`): mamba-ssm's kernel, the triton and torch backends on the GPU against the float64
reference, in float32 and bf16; the whole network on CUDA against the CPU, also under bf16 autocast."""
import pytest
import torch

from das2f.models import DAS2F, selective_scan
from das2f.ops.scan import _mamba_ssm_fn, scan_triton

from .test_scan import make_inputs
from .test_scan_triton import low_precision_inputs, relative_errors

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("no CUDA device on this machine", allow_module_level=True)

BACKENDS = ["mamba_ssm", "triton", "torch"]


def skip_unavailable(backend):
    if backend == "mamba_ssm" and _mamba_ssm_fn()[0] is None:
        pytest.skip(_mamba_ssm_fn()[1])
    if backend == "triton" and scan_triton.IMPORT_ERROR is not None:
        pytest.skip(scan_triton.IMPORT_ERROR)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 64, 4, 16, 256), (3, 8, 2, 4, 37), (2, 96, 2, 24, 300)])
def test_backend_on_cuda_matches_reference(backend, shape):
    skip_unavailable(backend)
    x64 = {k: v.requires_grad_() for k, v in make_inputs(*shape, regime="stress", seed=1).items()}
    x32 = {k: v.detach().float().cuda().requires_grad_() for k, v in x64.items()}
    y_ref = selective_scan(**x64, delta_softplus=True, backend="reference")
    y = selective_scan(**x32, delta_softplus=True, backend=backend)
    # mamba-ssm's own test tolerances for float32: rtol 6e-4, atol 2e-3 (grads looser)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=6e-4, atol=2e-3)
    w = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * w).sum(), list(x64.values()))
    g = torch.autograd.grad((y * w.float().cuda()).sum(), list(x32.values()))
    for name, a, b in zip(x64, g_ref, g):
        err = (a - b.double().cpu()).abs().max() / a.abs().max()
        assert err < 5e-3, f"{backend} gradient of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_on_cuda_reduced_precision(backend, dtype):
    """bf16 / fp16 inputs on the GPU: the state in float32, y's error its final rounding (bounds of
    tests/test_scan_triton.py; mamba-ssm's kernel also accumulates in float32)."""
    skip_unavailable(backend)
    low, x64 = low_precision_inputs(dtype)
    x64 = {k: v.requires_grad_() for k, v in x64.items()}
    inputs = {k: v.cuda().requires_grad_() for k, v in low.items()}
    y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    y_ref = selective_scan(**x64, delta_softplus=True, backend="reference")
    errors = relative_errors(x64, y_ref, y.cpu(), list(inputs.values()))
    y_tol = 4e-3 if dtype == torch.bfloat16 else 4e-4
    assert errors.pop("y") < y_tol
    assert max(errors.values()) < 2 * y_tol, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_on_cuda_matches_cpu(backend, monkeypatch):
    """The whole 1-stage network on the GPU (SS2D's time-major sequences handed to mamba-ssm in its
    own layout, to the triton kernels as strided views, or to our torch scan) against the same weights
    on the CPU; under bf16 autocast within the CPU test's 10% (tests/test_precision.py)."""
    skip_unavailable(backend)
    # cuDNN convolutions default to TF32 on Ampere and later (10-bit mantissa): off for a float32 comparison
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    cpu = DAS2F(stages=1, scan_backend="torch").eval()
    gpu = DAS2F(stages=1, scan_backend=backend).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    ms, pan = torch.randn(4, 4, 16, 16), torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        y_cpu, y_gpu = cpu(ms, pan), gpu(ms.cuda(), pan.cuda()).cpu()
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-3, atol=1e-3 * y_cpu.abs().max().item())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        y_bf16 = gpu(ms.cuda(), pan.cuda()).float().cpu()
    assert (y_bf16 - y_cpu).abs().max() / y_cpu.abs().max() < 0.1


def test_network_trains_on_cuda_with_every_backend_alike():
    """One training step from the same weights with each available backend: the same gradients."""
    torch.manual_seed(0)
    ref = DAS2F(stages=1, scan_backend="torch").cuda()
    ms, pan = torch.randn(4, 4, 16, 16, device="cuda"), torch.randn(4, 1, 64, 64, device="cuda")
    y = torch.randint(0, 11, (4,), device="cuda")
    torch.nn.functional.cross_entropy(ref(ms, pan), y).backward()
    for backend in ("triton", "mamba_ssm"):
        if (backend == "mamba_ssm" and _mamba_ssm_fn()[0] is None) or (backend == "triton" and scan_triton.IMPORT_ERROR):
            continue
        other = DAS2F(stages=1, scan_backend=backend).cuda()
        other.load_state_dict(ref.state_dict())
        torch.nn.functional.cross_entropy(other(ms, pan), y).backward()
        floor = 1e-5 * max(p.grad.abs().max() for p in ref.parameters())
        for (name, p), q in zip(ref.named_parameters(), other.parameters()):
            assert (q.grad - p.grad).abs().max() <= 1e-3 * p.grad.abs().max() + floor, f"{backend}: {name}"
