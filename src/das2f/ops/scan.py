"""Selective scan (Mamba-1 S6 recurrence) behind one interface, with several backends.

Conventions follow mamba-ssm's ``selective_scan_fn``:

- ``u``, ``delta``: (B, D, L)
- ``A``: (D, N), real, negative for a stable scan
- ``B``, ``C``: (B, G, N, L), G groups, G divides D; channel d uses group d // (D // G)
- ``D``: (D,) or None, the skip connection; ``delta_bias``: (D,) or None
- returns ``y``: (B, D, L)

The recurrence, with ``delta <- softplus(delta + delta_bias)`` when ``delta_softplus``:
``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t`` and ``y_t = <C_t, h_t> + D * u_t``.

``selective_scan_time_major`` is the same scan on time-major sequences (u, delta, y: (L, B, D); B, C:
(L, B, G, N)), the layout the torch backend computes in; SS2D produces it directly.

Backends:

- ``torch``: chunked, time-major, pure PyTorch, one autograd node with a hand-written backward (bias,
  softplus, delta * u and D * u included). States are kept only at chunk starts and recomputed per chunk in
  the backward, so memory is O(B*D*N*(L/chunk + chunk)) instead of O(B*D*N*L). No closed form over a chunk
  (no ``exp(cumsum)``), hence no float32 overflow for large deltas.
- ``cpu``: one autograd node around two numba kernels (``scan_cpu.py``): the whole recurrence with
  delta * u and D * u in one compiled, vectorised pass per call, forward and backward, parallel over
  (batch, group) blocks. The CPU default.
- ``reference``: the obvious sequential loop with autograd, for tests (run it in float64).
- ``triton``: two Triton kernels, forward and reverse-scan backward (``scan_triton.py``): the fast GPU scan
  with no CUDA build; CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI
  checks it.
- ``mamba_ssm``: mamba-ssm's CUDA kernel; only where it imports and the tensors are on CUDA.
- ``auto``: on CUDA, ``mamba_ssm`` if it imports (``triton`` first under deterministic algorithms:
  mamba-ssm's backward uses atomic adds), else ``triton`` if it imports, else ``torch``; on CPU, ``cpu`` if
  numba imports, else ``torch``. Logs its choice and the reason once.

Precision: every backend but ``reference`` keeps the state and its exponentials in float32 whatever the
inputs' dtype (bfloat16 / float16 inputs, or autocast around the call) and returns y in u's dtype.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from ..runtime.errors import ConfigError
from . import scan_cpu, scan_triton

log = logging.getLogger(__name__)

_LOG2E = 1.4426950408889634  # log2(e)
# steps per chunk of the recurrence: the fastest with peak memory under 0.5 GB in `make bench`
# (figures and their date in docs/benchmarks.md)
DEFAULT_CHUNK = 4


def _check_shapes(u, delta, A, B, C, D, delta_bias, time_major=False):
    seq, bc = ("(L, B, D)", "(L={length}, B={b}, G, N={n})") if time_major else ("(B, D, L)", "(B={b}, G, N={n}, L={length})")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be {seq}, got shape {tuple(u.shape)}")
    length, b, d = u.shape if time_major else (u.shape[2], u.shape[0], u.shape[1])
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (D={d}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        groups = t.shape[2 if time_major else 1] if t.dim() == 4 else 0
        expected = (length, b, groups, n) if time_major else (b, groups, n, length)
        if tuple(t.shape) != expected or not groups or d % groups:
            raise ValueError(
                f"selective_scan: {name} must be {bc.format(length=length, b=b, n=n)} with G dividing D={d}, "
                f"got {tuple(t.shape)}"
            )
    if B.shape != C.shape:
        raise ValueError(f"selective_scan: B and C must have the same shape, got {tuple(B.shape)} and {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"selective_scan: {name} must be ({d},), got {tuple(t.shape)}")


# --------------------------------------------------------------------------- reference
def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Plain sequential recurrence, differentiable by autograd. Slow; for tests."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    g = B.shape[1]
    Bx = B.repeat_interleave(d // g, dim=1)  # (B, D, N, L)
    Cx = C.repeat_interleave(d // g, dim=1)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    return y


# --------------------------------------------------------------------------- torch (chunked)
# The recurrence y_t = <C_t, h_t>, h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t runs on
# contiguous time-major tensors, the state laid out (N, E) so that the long channel axis E is
# innermost (broadcasts over N then run vectorised):
#     du, delta : (L, B, G, E)  with E = D // G and du = delta * u
#     A         : (G, N, E)
#     Bt, Ct    : (L, B, G, N)
#     y         : (L, B, G, E)
# Per chunk of T steps the work is a few whole-chunk passes (T, B, G, N, E) into reused buffers
# (no fresh allocation per chunk, no page faults) and one in-place fused multiply-add per time
# step. Gradients: with g_t = dL/dh_t,
#     g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1},
#     dL/d(du_t) = <g_t, B_t>,  dL/dB_t = sum_e du_t g_t,  dL/dC_t = sum_e dy_t h_t,
#     X_t = g_t exp(delta_t A) h_{t-1},  dL/ddelta_t = <X_t, A>,  dL/dA = sum_{t,b} X_t delta_t.


def _chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, length)) for s in range(0, length, chunk)]


def _chunk_states(h0, delta, du, A2, Bt, dA, hs):
    """Fill dA with exp(delta A) = 2^(delta A log2 e) and hs with the states h_t of one chunk.

    ``A2`` is A * log2(e): torch's exp2 kernel is faster than its exp on the CPU (README, Benchmark)
    and the exponentials are the recurrence's largest cost.
    """
    torch.mul(delta[:, :, :, None, :], A2, out=dA)
    dA.exp2_()
    torch.mul(du[:, :, :, None, :], Bt[..., None], out=hs)
    prev = h0
    for t in range(hs.shape[0]):
        torch.addcmul(hs[t], prev, dA[t], out=hs[t])
        prev = hs[t]


def _recurrence_forward(du, delta, A, Bt, Ct, chunk: int, keep: bool):
    """y and, with ``keep``, the state at every chunk start (for the backward); without it
    (inference) only the running state is kept."""
    length, b, g, e = du.shape
    n = A.shape[1]
    y = du.new_empty(length, b, g, e)
    # one small tensor per chunk start: one (L/T)-state allocation would exceed glibc's mmap
    # threshold and page-fault afresh on every call
    checkpoints = []
    buf_a = du.new_empty(chunk, b, g, n, e)
    buf_h = du.new_empty(chunk, b, g, n, e)
    carry = None if keep else du.new_empty(b, g, n, e)
    h = du.new_zeros(b, g, n, e)
    A2 = A * _LOG2E
    for s, t1 in _chunks(length, chunk):
        if keep:
            checkpoints.append(h)
        dA, hs = buf_a[: t1 - s], buf_h[: t1 - s]
        _chunk_states(h, delta[s:t1], du[s:t1], A2, Bt[s:t1], dA, hs)
        # y = C (1, N) @ h (N, E) per (t, b, g): the row-vector form is the fast one in CPU BLAS
        torch.bmm(Ct[s:t1].view(-1, 1, n), hs.view(-1, n, e), out=y[s:t1].view(-1, 1, e))
        h = hs[-1].clone() if keep else carry.copy_(hs[-1])  # before the buffer is overwritten
    return y, checkpoints


def _recurrence_backward(dy, du, delta, A, Bt, Ct, checkpoints, chunk: int):
    """Gradients of du, delta, A, Bt, Ct from dy (all time-major, formulas above)."""
    length, b, g, e = du.shape
    n = A.shape[1]
    d_du, d_delta = torch.empty_like(du), torch.empty_like(delta)
    d_B, d_C = torch.empty_like(Bt), torch.empty_like(Ct)
    d_A = torch.zeros_like(A)
    buf_a, buf_h, buf_g = (du.new_empty(chunk, b, g, n, e) for _ in range(3))
    A2 = A * _LOG2E
    carry = None  # exp(delta_{t+1} A) g_{t+1} at the first step of the following chunk
    carry_buf = du.new_empty(b, g, n, e)
    for i, (s, t1) in reversed(list(enumerate(_chunks(length, chunk)))):
        T = t1 - s
        h0 = checkpoints[i]
        dA, hs, grad = buf_a[:T], buf_h[:T], buf_g[:T]
        _chunk_states(h0, delta[s:t1], du[s:t1], A2, Bt[s:t1], dA, hs)
        dy_c = dy[s:t1]
        torch.bmm(dy_c.view(-1, 1, e), hs.view(-1, n, e).transpose(1, 2), out=d_C[s:t1].view(-1, 1, n))
        torch.mul(dy_c[:, :, :, None, :], Ct[s:t1, ..., None], out=grad)
        if carry is not None:
            grad[-1] += carry
        for t in range(T - 1, 0, -1):
            grad[t - 1].addcmul_(dA[t], grad[t])
        dA.mul_(grad)  # dA[t] now holds exp(delta_t A) g_t
        carry = carry_buf.copy_(dA[0])
        torch.bmm(Bt[s:t1].view(-1, 1, n), grad.view(-1, n, e), out=d_du[s:t1].view(-1, 1, e))
        torch.bmm(du[s:t1].view(-1, 1, e), grad.view(-1, n, e).transpose(1, 2), out=d_B[s:t1].view(-1, 1, n))
        dA[1:].mul_(hs[:-1])
        dA[0].mul_(h0)  # dA now holds X_t
        # contractions over N (d_delta) and over (t, b) (d_A); hs and grad serve as scratch
        torch.sum(torch.mul(dA, A, out=hs), dim=-2, out=d_delta[s:t1])
        d_A += torch.mul(dA, delta[s:t1, :, :, None, :], out=grad).sum(dim=(0, 1))
    return d_du, d_delta, d_A, d_B, d_C


class _SelectiveScanTorch(torch.autograd.Function):
    """The whole scan in one node: delta bias and softplus, delta * u, the recurrence, D * u.

    Takes and returns either mamba-ssm's layout or the time-major one (``time_major``: u, delta
    and y (L, B, D), B and C (L, B, G, N)). In mamba-ssm's layout each (B, D, L) operand is
    transposed to time-major once by a copy (a transposing copy costs several times a plain one) and every
    elementwise step, forward and backward, runs between tensors of the same layout. (Left to
    autograd, the gradients came back as permuted views and the elementwise backward ops between
    them and contiguous tensors ran about 10x slower than with matching strides.)
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, time_major):
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, delta_bias)]
        # the state in float32 at least whatever the inputs (bf16 / fp16, or autocast, which would run
        # bmm in bf16); float64 stays float64
        wide = torch.promote_types(u.dtype, torch.float32)
        with torch.autocast(u.device.type, enabled=False):
            wide_inputs = (None if t is None else t.to(wide) for t in (u, delta, A, B, C, D, delta_bias))
            y = _SelectiveScanTorch._forward(ctx, *wide_inputs, delta_softplus, chunk, time_major)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dy):
        with torch.autocast(dy.device.type, enabled=False):
            grads = _SelectiveScanTorch._backward(ctx, dy.to(torch.promote_types(dy.dtype, torch.float32)))
        return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)) + (None, None, None)

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, time_major):
        if time_major:
            (length, b, d), g = u.shape, B.shape[2]
        else:
            (b, d, length), g = u.shape, B.shape[1]
        n, e = A.shape[1], d // g

        def to_time_major(t):  # (B, D, L) or (L, B, D) -> contiguous (L, B, G, E)
            return (t if time_major else t.permute(2, 0, 1)).reshape(length, b, g, e).contiguous()

        u_t = to_time_major(u)
        x_t = to_time_major(delta)  # softplus' = sigmoid(x): the backward needs x itself
        if delta_bias is not None:
            x_t = x_t + delta_bias.view(g, e)
        delta_t = F.softplus(x_t) if delta_softplus else x_t
        du_t = delta_t * u_t
        A_t = A.reshape(g, e, n).transpose(1, 2).contiguous()  # (G, N, E)
        B_t, C_t = (t.contiguous() if time_major else t.permute(3, 0, 1, 2).contiguous() for t in (B, C))
        needs = ctx.needs_input_grad
        keep = any(needs[i] for i in (0, 1, 2, 3, 4, 6))  # everything but D goes through the states
        y_t, checkpoints = _recurrence_forward(du_t, delta_t, A_t, B_t, C_t, chunk, keep)
        if D is not None:
            y_t.addcmul_(u_t, D.view(g, e))
        ctx.save_for_backward(u_t, x_t if delta_softplus else None, delta_t, du_t, A_t, B_t, C_t, D, *checkpoints)
        ctx.config = (delta_softplus, chunk, keep, delta_bias is not None, time_major)
        y = y_t.view(length, b, d)
        return y if time_major else y.permute(1, 2, 0).contiguous()

    @staticmethod
    def _backward(ctx, dy):
        u_t, x_t, delta_t, du_t, A_t, B_t, C_t, D, *checkpoints = ctx.saved_tensors
        delta_softplus, chunk, keep, has_bias, time_major = ctx.config
        needs = ctx.needs_input_grad
        length, b, g, e = u_t.shape
        d, n = g * e, A_t.shape[1]

        def to_caller(t):  # (L, B, G, E) -> the caller's layout
            t = t.view(length, b, d)
            return t if time_major else t.permute(1, 2, 0).contiguous()

        dy_t = (dy if time_major else dy.permute(2, 0, 1)).reshape(length, b, g, e).contiguous()
        d_u = d_delta = d_A = d_B = d_C = d_D = d_bias = None
        if D is not None and needs[5]:
            d_D = torch.mul(dy_t, u_t).sum(dim=(0, 1)).view(d)
        if keep:
            d_du, d_x, d_A_t, d_B_t, d_C_t = _recurrence_backward(dy_t, du_t, delta_t, A_t, B_t, C_t, checkpoints, chunk)
            if needs[0]:
                d_u_t = torch.mul(d_du, delta_t)
                if D is not None:
                    d_u_t.addcmul_(dy_t, D.view(g, e))
                d_u = to_caller(d_u_t)
            if needs[1] or needs[6]:
                d_x.addcmul_(d_du, u_t)  # gradient of delta after softplus
                if delta_softplus:
                    d_x.mul_(torch.sigmoid(x_t))
                d_delta = to_caller(d_x) if needs[1] else None
                d_bias = d_x.sum(dim=(0, 1)).view(d) if has_bias and needs[6] else None
            d_A = d_A_t.transpose(1, 2).reshape(d, n)
            d_B, d_C = (t if time_major else t.permute(1, 2, 3, 0).contiguous() for t in (d_B_t, d_C_t))
        return d_u, d_delta, d_A, d_B, d_C, d_D, d_bias


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, chunk=DEFAULT_CHUNK):
    """Fast pure-PyTorch scan, mamba-ssm's layout (module docstring); differentiable in every input."""
    return _SelectiveScanTorch.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk, False)


# --------------------------------------------------------------------------- cpu (numba)
def _why_not_cpu_kernels(u: torch.Tensor) -> str | None:
    """Why numba's kernels cannot compute this scan (numba does not import; float64 inputs, which they would
    compute in float32), or None where they can."""
    if scan_cpu.IMPORT_ERROR is not None:
        return scan_cpu.IMPORT_ERROR
    return "float64 inputs (its state is float32)" if u.dtype == torch.float64 else None


def selective_scan_cpu(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, time_major=False):
    """The scan with numba's fused kernels (``scan_cpu.py``); CPU tensors only. Where they cannot run
    (:func:`_why_not_cpu_kernels`) the torch backend computes it, and the log says why, once."""
    if u.device.type != "cpu":
        raise RuntimeError(f"scan backend 'cpu' needs CPU tensors, got device {u.device}; use auto, triton or torch")
    why = _why_not_cpu_kernels(u)
    if why:
        _announce("torch", f"the cpu backend cannot run: {why}",
                  logging.WARNING if scan_cpu.IMPORT_ERROR else logging.INFO)
        return _SelectiveScanTorch.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, DEFAULT_CHUNK, time_major)
    return scan_cpu.SelectiveScanCPU.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, time_major)


# --------------------------------------------------------------------------- mamba-ssm
@functools.lru_cache(maxsize=1)
def _mamba_ssm_fn():
    """mamba-ssm's CUDA ``selective_scan_fn`` or the reason it is unavailable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # ImportError, or its CUDA extension failing to load
        return None, f"mamba-ssm does not import ({type(err).__name__}: {err})"
    return selective_scan_fn, None


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    fn, reason = _mamba_ssm_fn()
    if fn is None:
        raise RuntimeError(f"scan backend 'mamba_ssm' requested but {reason}; install the 'cuda' extra")
    if not u.is_cuda:
        raise RuntimeError(f"scan backend 'mamba_ssm' needs CUDA tensors, got device {u.device}")
    # keyword arguments: the 7th positional argument of selective_scan_fn is z
    return fn(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
        D=None if D is None else D.float(), delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
    )


# --------------------------------------------------------------------------- dispatch
_announced: set[tuple[str, str]] = set()


def _announce(backend: str, why: str, level: int = logging.INFO) -> None:
    if (backend, why) not in _announced:
        _announced.add((backend, why))
        log.log(level, "selective scan backend: %s (%s)", backend, why)


def check_backend(backend: str) -> None:
    """A scan_backend setting is 'auto' or a key of BACKENDS (checked when the model is built)."""
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"scan_backend must be one of {['auto', *BACKENDS]}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Name of the backend that ``backend`` ('auto' included) runs on ``device``."""
    check_backend(backend)
    deterministic = torch.are_deterministic_algorithms_enabled()  # deterministic=true (trainer.deterministic)
    if backend != "auto":
        if backend == "mamba_ssm" and deterministic:
            _announce("mamba_ssm", "asked for, but deterministic algorithms are on and mamba-ssm's backward sums dA and "
                      "the delta bias's gradient with atomic adds: gradients may differ in the last bits between runs; "
                      "scan_backend=triton is deterministic", logging.WARNING)
        return backend
    if device.type == "cpu":
        if scan_cpu.IMPORT_ERROR is None:
            _announce("cpu", "tensors on cpu: numba's fused kernels")
            return "cpu"
        _announce("torch", f"tensors on cpu and the cpu backend cannot run: {scan_cpu.IMPORT_ERROR}", logging.WARNING)
        return "torch"
    if device.type != "cuda":
        _announce("torch", f"tensors on {device.type}; mamba-ssm and triton run on CUDA only")
        return "torch"
    fn, reason = _mamba_ssm_fn()
    if fn is not None and deterministic and scan_triton.IMPORT_ERROR is None:
        _announce("triton", "deterministic algorithms are on: mamba-ssm's backward sums some gradients with atomic adds, "
                  "triton's kernels write each output once")
        return "triton"
    if fn is not None:
        _announce("mamba_ssm", "mamba-ssm imports and tensors are on CUDA")
        return "mamba_ssm"
    if scan_triton.IMPORT_ERROR is None:
        _announce("triton", f"{reason}; triton imports and tensors are on CUDA")
        return "triton"
    _announce("torch", f"{reason}; {scan_triton.IMPORT_ERROR}")
    return "torch"


# The registry of scan implementations (mamba-ssm's layout); "auto" picks one per device (resolve_backend).
BACKENDS = {
    "torch": selective_scan_torch,
    "cpu": selective_scan_cpu,
    "reference": selective_scan_reference,
    "mamba_ssm": selective_scan_mamba_ssm,
    "triton": scan_triton.selective_scan_triton,
}


# Under torch.compile (model.compile=true) the cpu backend is two torch operators (scan_cpu.py, custom_op): dynamo
# traces through it and the network compiles as one graph. The other backends stay eager between compiled graphs:
# the torch backend is a Python loop of L / chunk steps that dynamo would unroll into thousands of nodes, and the
# kernels of the others are opaque to it.
def _compiled_cpu_scan(backend: str, u: torch.Tensor) -> bool:
    return (torch.compiler.is_compiling() and backend in ("auto", "cpu") and u.device.type == "cpu"
            and _why_not_cpu_kernels(u) is None)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend: str = "auto"):
    """Selective scan with mamba-ssm's conventions (module docstring); ``backend``: auto or a key of BACKENDS."""
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    if _compiled_cpu_scan(backend, u):
        return scan_cpu.SelectiveScanCPU.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, False)
    return _eager_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend)


@torch.compiler.disable
def _eager_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    return BACKENDS[resolve_backend(backend, u.device)](
        u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus
    )


_TIME_MAJOR_ORDER = {"u": (2, 0, 1), "delta": (2, 0, 1), "B": (3, 0, 1, 2), "C": (3, 0, 1, 2)}


def time_major_arguments(x: dict) -> dict:
    """Keyword arguments in mamba-ssm's layout -> those of ``selective_scan_time_major`` (views)."""
    return {k: v.permute(*_TIME_MAJOR_ORDER[k]) if k in _TIME_MAJOR_ORDER else v for k, v in x.items()}


def selective_scan_time_major(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                              backend: str = "auto"):
    """The same scan on time-major sequences: u, delta (L, B, D), B, C (L, B, G, N) -> y (L, B, D).

    The layout the torch backend computes in, so callers that can produce it (SS2D) skip the
    transposing copies in and out; the other backends get mamba-ssm's layout as views (the triton kernels
    read them through their strides and write y time-major).
    """
    _check_shapes(u, delta, A, B, C, D, delta_bias, time_major=True)
    if _compiled_cpu_scan(backend, u):
        return scan_cpu.SelectiveScanCPU.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, True)
    return _eager_scan_time_major(u, delta, A, B, C, D, delta_bias, delta_softplus, backend)


@torch.compiler.disable
def _eager_scan_time_major(u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    name = resolve_backend(backend, u.device)
    if name == "torch":
        return _SelectiveScanTorch.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, DEFAULT_CHUNK, True)
    if name == "cpu":
        return selective_scan_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus, time_major=True)
    # the triton kernels read the views through their strides and write y time-major (no copy either way)
    layout = {"y_time_major": True} if name == "triton" else {}
    y = BACKENDS[name](u.permute(1, 2, 0), delta.permute(1, 2, 0), A, B.permute(1, 2, 3, 0), C.permute(1, 2, 3, 0),
                       D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, **layout)
    return y.permute(2, 0, 1)
