"""CUDA-only: mamba-ssm's kernel and our torch backend on the GPU against the float64 reference."""
import pytest
import torch

from das2f.models import DAS2F, selective_scan
from das2f.models.scan import _mamba_ssm_fn

from .test_scan import make_inputs

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("no CUDA device on this machine", allow_module_level=True)


@pytest.mark.parametrize("backend", ["mamba_ssm", "torch"])
@pytest.mark.parametrize("shape", [(2, 64, 4, 16, 256), (3, 8, 2, 4, 37)])
def test_backend_on_cuda_matches_reference(backend, shape):
    if backend == "mamba_ssm" and _mamba_ssm_fn()[0] is None:
        pytest.skip(_mamba_ssm_fn()[1])
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


@pytest.mark.parametrize("backend", ["mamba_ssm", "torch"])
def test_network_on_cuda_matches_cpu(backend):
    """The whole 1-stage network on the GPU (SS2D's time-major sequences handed to mamba-ssm in its
    own layout, or to our torch scan) against the same weights on the CPU."""
    if backend == "mamba_ssm" and _mamba_ssm_fn()[0] is None:
        pytest.skip(_mamba_ssm_fn()[1])
    torch.manual_seed(0)
    cpu = DAS2F(stages=1, scan_backend="torch").eval()
    gpu = DAS2F(stages=1, scan_backend=backend).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    ms, pan = torch.randn(4, 4, 16, 16), torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        y_cpu, y_gpu = cpu(ms, pan), gpu(ms.cuda(), pan.cuda()).cpu()
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-3, atol=1e-3 * y_cpu.abs().max().item())
