"""The selective scan as two Triton kernels: a forward and a reverse-scan backward.

No CUDA build, no compiler beyond the one Triton ships: ``pip install triton`` is the whole GPU set-up.
The same kernels run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
CI proves them correct without a GPU (tests/test_scan_triton.py).

Layout: every operand is addressed through its strides in mamba-ssm's index order, u/delta/y
``(B, D, L)`` and B/C ``(B, G, N, L)``, so both entries (mamba-ssm's layout and the time-major one
SS2D produces) run without a copy; each is fastest when consecutive channels are adjacent in
memory (time-major), since one program reads ``BLOCK_D`` channels of one time step at a time.

One program per (batch, group, block of ``BLOCK_D`` channels of the group), the whole state
``(BLOCK_D, N)`` in registers in float32 whatever the input dtype, the steps in sequence:

    delta_t = softplus(delta_t + bias)           (when asked for)
    h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t
    y_t = <C_t, h_t> + D u_t

exp(delta A) is taken step by step (as 2^(delta A log2 e)), never as exp(cumsum) over a chunk,
which overflows float32 for the large deltas of trained models (../shared/design/scan-notes.md).

Backward (the torch backend's method, ``scan.py``): the forward keeps the state at every
``CHUNK``-th step; the backward walks the chunks from last to first, recomputes the chunk's states
from its checkpoint into a small per-program scratch buffer, then runs the reverse recurrence
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}        (g_t = dL/dh_t)
giving d(delta_t u_t) = <g_t, B_t>, dB_t = sum_d delta_t u_t g_t, dC_t = sum_d dy_t h_t,
X_t = g_t exp(delta_t A) h_{t-1}, d delta_t += <X_t, A>, dA = sum_{b,t} X_t delta_t.
Sums over channels (dB, dC) and over the batch (dA) are written per program and added by torch
afterwards (deterministic: no atomics).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError as err:  # the `dev` extra installs it; on CUDA machines torch brings it
    triton = tl = None
    IMPORT_ERROR = f"triton does not import ({type(err).__name__}: {err})"
else:
    IMPORT_ERROR = None

# log2(e): the kernels take exp(x) as exp2(x log2 e); a constexpr, as Triton requires of globals in a kernel
_LOG2E = 1.4426950408889634 if tl is None else tl.constexpr(1.4426950408889634)
# steps between saved states: memory B*D*N*L/CHUNK floats for the checkpoints, and the backward
# recomputes at most CHUNK states per program into scratch (B*D*CHUNK*BLOCK_N floats)
CHUNK = 16
# launch settings, read at every call: channels per program (a power of two: more programs, more
# parallelism, against fewer loads of B_t / C_t per channel) and warps per program. Untuned: on a GPU,
# `python -m das2f.bench.gpu` times the alternatives side by side (its "Triton launch settings" table).
BLOCK_D = 16
NUM_WARPS = 4


def _jit(fn):
    """triton.jit where triton imports. It compiles for the GPU, or, when TRITON_INTERPRET=1 was set before
    triton was first imported (tests/conftest.py does on machines without CUDA), runs in Triton's CPU
    interpreter: the mode is fixed for the process at that import, for triton.language's own functions too."""
    return fn if triton is None else triton.jit(fn)


@_jit
def _program(E, N, nsub, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch row, program index along the channels, group g, channels d and states n
    (each with its mask: a group's last block and the state axis are padded to powers of two)."""
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    g = pid // nsub
    e = (pid % nsub) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    return pid_b, pid, g, g * E + e, e < E, n, n < N


@_jit
def _per_channel(ptr, d, md, PRESENT: tl.constexpr):
    """An optional (D,) operand (D, delta bias) at channels d in float32; where absent, zeros that the
    kernels never use (their terms sit under the same constexpr flag, so no work is compiled for them)."""
    if PRESENT:
        values = tl.load(ptr + d, mask=md, other=0.0).to(tl.float32)
    else:
        values = d.to(tl.float32) * 0.0
    return values


@_jit
def _delta(x_p, t, s_xl, md, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta_t + bias, and that after softplus when asked for) at channels d, in float32. Softplus as
    torch's: x above 20; exp(x) where 1 + exp(x) rounds to 1."""
    x = tl.load(x_p + t * s_xl, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += bias
    delta = x
    if SOFTPLUS:
        delta = tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))
    return x, delta


@_jit
def _forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr,
    L, E, N, DT, nsub, nchunks,
    s_ub, s_ud, s_ul, s_xb, s_xd, s_xl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b, pid, g, d, md, n, mn = _program(E, N, nsub, BLOCK_D, BLOCK_N)
    m2 = md[:, None] & mn[None, :]
    A2 = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32) * _LOG2E
    bias = _per_channel(bias_ptr, d, md, HAS_BIAS)
    skip = _per_channel(D_ptr, d, md, HAS_D)
    u_p = u_ptr + pid_b * s_ub + d * s_ud
    x_p = delta_ptr + pid_b * s_xb + d * s_xd
    y_p = y_ptr + pid_b * s_yb + d * s_yd
    B_p = B_ptr + pid_b * s_Bb + g * s_Bg + n * s_Bn
    C_p = C_ptr + pid_b * s_Cb + g * s_Cg + n * s_Cn
    k_p = ckpt_ptr + (pid_b * DT + d)[:, None] * (nchunks * N) + n[None, :]  # (B, D, nchunks, N) float32
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(0, nchunks):
        if SAVE:
            tl.store(k_p + c * N, h, mask=m2)
        t0 = c * CHUNK
        for t in range(t0, tl.minimum(t0 + CHUNK, L)):
            _, x = _delta(x_p, t, s_xl, md, bias, HAS_BIAS, SOFTPLUS)
            uu = tl.load(u_p + t * s_ul, mask=md, other=0.0).to(tl.float32)
            b = tl.load(B_p + t * s_Bl, mask=mn, other=0.0).to(tl.float32)
            cc = tl.load(C_p + t * s_Cl, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp2(x[:, None] * A2) * h + (x * uu)[:, None] * b[None, :]
            y = tl.sum(h * cc[None, :], axis=1)
            if HAS_D:
                y += skip * uu
            tl.store(y_p + t * s_yl, y, mask=md)


@_jit
def _backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, ckpt_ptr, scratch_ptr,
    du_ptr, dx_ptr, dA_ptr, dB_ptr, dC_ptr,
    L, E, N, DT, nsub, nchunks,
    s_ub, s_ud, s_ul, s_xb, s_xd, s_xl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_yb, s_yd, s_yl, s_gb, s_gd, s_gl,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b, pid, g, d, md, n, mn = _program(E, N, nsub, BLOCK_D, BLOCK_N)
    m2 = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    bias = _per_channel(bias_ptr, d, md, HAS_BIAS)
    skip = _per_channel(D_ptr, d, md, HAS_D)
    u_p = u_ptr + pid_b * s_ub + d * s_ud
    x_p = delta_ptr + pid_b * s_xb + d * s_xd
    dy_p = dy_ptr + pid_b * s_yb + d * s_yd
    du_p = du_ptr + pid_b * s_gb + d * s_gd  # d_u and d_delta: contiguous-like, same strides
    dx_p = dx_ptr + pid_b * s_gb + d * s_gd
    B_p = B_ptr + pid_b * s_Bb + g * s_Bg + n * s_Bn
    C_p = C_ptr + pid_b * s_Cb + g * s_Cg + n * s_Cn
    k_p = ckpt_ptr + (pid_b * DT + d)[:, None] * (nchunks * N) + n[None, :]
    # per-program partial sums over its channels: dB, dC (B, G, nsub, N, L); dA (B, D, N)
    part = ((pid_b * tl.num_programs(1) + pid) * N + n) * L
    s_p = scratch_ptr + (pid_b * tl.num_programs(1) + pid) * (CHUNK * BLOCK_D * BLOCK_N) \
        + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
    g_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # exp(delta_{t+1} A) g_{t+1}
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for ci in range(0, nchunks):
        c = nchunks - 1 - ci
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        # the chunk's states h_{t-1}, recomputed from its checkpoint
        h = tl.load(k_p + c * N, mask=m2, other=0.0)
        for t in range(t0, t1):
            tl.store(s_p + (t - t0) * (BLOCK_D * BLOCK_N), h)
            _, x = _delta(x_p, t, s_xl, md, bias, HAS_BIAS, SOFTPLUS)
            uu = tl.load(u_p + t * s_ul, mask=md, other=0.0).to(tl.float32)
            b = tl.load(B_p + t * s_Bl, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp2(x[:, None] * A2) * h + (x * uu)[:, None] * b[None, :]
        tl.debug_barrier()
        for tt in range(0, t1 - t0):
            t = t1 - 1 - tt
            h_prev = tl.load(s_p + (t - t0) * (BLOCK_D * BLOCK_N))
            raw, x = _delta(x_p, t, s_xl, md, bias, HAS_BIAS, SOFTPLUS)
            uu = tl.load(u_p + t * s_ul, mask=md, other=0.0).to(tl.float32)
            dy = tl.load(dy_p + t * s_yl, mask=md, other=0.0).to(tl.float32)
            b = tl.load(B_p + t * s_Bl, mask=mn, other=0.0).to(tl.float32)
            cc = tl.load(C_p + t * s_Cl, mask=mn, other=0.0).to(tl.float32)
            dA = tl.exp2(x[:, None] * A2)
            xu = x * uu
            h = dA * h_prev + xu[:, None] * b[None, :]
            grad = dy[:, None] * cc[None, :] + g_next
            tl.store(dC_ptr + part + t, tl.sum(dy[:, None] * h, axis=0), mask=mn)
            tl.store(dB_ptr + part + t, tl.sum(xu[:, None] * grad, axis=0), mask=mn)
            d_xu = tl.sum(grad * b[None, :], axis=1)
            X = grad * dA * h_prev
            d_delta = d_xu * uu + tl.sum(X * A, axis=1)
            dA_acc += X * x[:, None]
            g_next = grad * dA
            if SOFTPLUS:
                d_delta = d_delta / (1.0 + tl.exp(-raw))  # softplus' = sigmoid
            d_u = d_xu * x
            if HAS_D:
                d_u += skip * dy
            tl.store(du_p + t * s_gl, d_u, mask=md)
            tl.store(dx_p + t * s_gl, d_delta, mask=md)
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dA_ptr + (pid_b * DT + d)[:, None] * N + n[None, :], dA_acc, mask=m2)


# whether the kernels run in Triton's interpreter (CPU tensors) rather than compiled (CUDA tensors)
INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)


def _geometry(u, B, A):
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    e = d // g
    block_d = min(BLOCK_D, triton.next_power_of_2(e))
    nsub = triton.cdiv(e, block_d)
    return b, d, length, g, n, e, block_d, nsub, triton.cdiv(length, CHUNK), max(triton.next_power_of_2(n), 2)


class _SelectiveScanTriton(torch.autograd.Function):
    """Operands in mamba-ssm's index order, any strides; ``y_time_major`` allocates y as (L, B, D)
    memory (returned as the (B, D, L) view) so that the time-major entry gets it without a copy."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, y_time_major):
        b, d, length, g, n, e, block_d, nsub, nchunks, block_n = _geometry(u, B, A)
        A = A.contiguous()
        # y in float32, cast by torch afterwards: round to nearest even on every device (Triton's
        # interpreter truncates on a store that converts)
        f32 = dict(dtype=torch.float32, device=u.device)
        y = torch.empty(length, b, d, **f32).permute(1, 2, 0) if y_time_major else torch.empty(b, d, length, **f32)
        save = any(ctx.needs_input_grad)
        ckpt = torch.empty((b, d, nchunks, n) if save else (1,), **f32)
        _forward_kernel[(b, g * nsub)](
            u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, y, ckpt,
            length, e, n, d, nsub, nchunks,
            *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *y.stride(),
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), SAVE=save,
            CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
        ctx.softplus = bool(delta_softplus)
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        b, d, length, g, n, e, block_d, nsub, nchunks, block_n = _geometry(u, B, A)
        f32 = dict(dtype=torch.float32, device=u.device)
        d_u = torch.empty(b, d, length, **f32)
        d_x = torch.empty(b, d, length, **f32)
        d_A = torch.empty(b, d, n, **f32)
        d_B = torch.empty(b, g, nsub, n, length, **f32)
        d_C = torch.empty(b, g, nsub, n, length, **f32)
        scratch = torch.empty(b, g * nsub, CHUNK, block_d, block_n, **f32)
        _backward_kernel[(b, g * nsub)](
            u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, dy, ckpt, scratch,
            d_u, d_x, d_A, d_B, d_C,
            length, e, n, d, nsub, nchunks,
            *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *dy.stride(), *d_u.stride(),
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus,
            CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=NUM_WARPS,
        )
        d_D = (dy.float() * u.float()).sum(dim=(0, 2)).to(D.dtype) if D is not None else None
        d_bias = d_x.sum(dim=(0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        return (
            d_u.to(u.dtype), d_x.to(delta.dtype), d_A.sum(0).to(A.dtype),
            d_B.sum(2).to(B.dtype), d_C.sum(2).to(C.dtype), d_D, d_bias, None, None,
        )


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, y_time_major=False):
    """Triton selective scan, mamba-ssm's layout (any strides); y in u's dtype, states in float32."""
    if triton is None:
        raise RuntimeError(f"scan backend 'triton' requested but {IMPORT_ERROR}")
    if u.is_cuda == INTERPRETED:
        raise RuntimeError(
            f"scan backend 'triton' needs CUDA tensors, got device {u.device} (TRITON_INTERPRET=1 set before triton's "
            "first import runs its kernels in Triton's CPU interpreter, for tests)" if not INTERPRETED else
            f"scan backend 'triton' runs in Triton's CPU interpreter in this process (TRITON_INTERPRET=1), got device {u.device}"
        )
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, y_time_major)
