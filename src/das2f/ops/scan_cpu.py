"""The ``cpu`` scan backend: the recurrence in one fused pass per call, compiled by numba.

The torch backend (``scan.py``) drives the recurrence from Python: per step a handful of small
tensor operations, thousands per call, each a pass over memory and an OpenMP region. Here the
whole recurrence, forward and backward, is one compiled loop per block of work:

- a block is one (batch, group) pair: the G groups of B/C are shared by the E = D / G channels of a
  group, so a block owns its B_t, C_t rows, its (N, E) state (a few KB: it stays in L1) and every
  output it writes (d_B and d_C are complete sums over its channels: no atomics). Blocks are spread
  over ``torch.get_num_threads()`` threads (das2f's thread policy, ``runtime/threads.py``); the
  kernels release the GIL, so plain Python threads run them in parallel;
- the innermost loop runs over the E channels, contiguous in the time-major layout, and is
  vectorised; exp(delta A) is ``_exp2`` below, a polynomial numba inlines and vectorises (numba
  vectorises ``math.exp`` only with Intel's SVML runtime, absent from most machines);
- training keeps the state every ``chunk`` steps; the backward recomputes one chunk's states and
  exponentials into a per-thread buffer and runs the reverse recurrence over it (the gradient
  formulas are those written out above ``scan.py``'s torch recurrence).

The state is float32; ``scan.py`` sends float64 inputs to the torch backend (the polynomial is
float32-exact only). numba compiles each kernel once per machine and caches it (``cache=True``: next to this
file, or in numba's per-user cache directory where that is read-only).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

try:
    import numba
    from llvmlite import binding as llvm
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    IMPORT_ERROR = None
except Exception as err:  # not installed, or a build that does not match this numpy / Python
    numba = None
    IMPORT_ERROR = f"numba does not import ({type(err).__name__}: {err})"


def _full_width_vectors() -> None:
    """On AVX-512 CPUs LLVM keeps to 256-bit vectors unless told otherwise (its 'prefer-256-bit' tuning);
    the kernels run about 1.25x faster with 512-bit ones (`make bench`, docs/benchmarks.md). Set in numba's
    config of this process only, where the user has set no features of their own: an environment variable
    would travel with a SLURM job to a node with another CPU. numba keys its cache by CPU features."""
    if numba.config.CPU_FEATURES is None and "NUMBA_CPU_FEATURES" not in os.environ:
        host = llvm.get_host_cpu_features().flatten()
        if "+avx512f" in host.split(","):
            numba.config.CPU_FEATURES = host + ",-prefer-256-bit"


if numba is not None:
    _full_width_vectors()

# steps between kept states: the backward's per-thread buffers (2 x chunk x N x E floats, 196 KB at the model's
# size) stay in L2 and the kept states are 1/16 of all states (25 MB). Chunks of 4, 8, 16 and 32 timed alike on
# the 2-core CPU, within its noise (2026-12-01, not in `make bench`).
DEFAULT_CHUNK = 16

# exp2 on [-1/2, 1/2] as the Taylor polynomial of e^(f ln 2) to degree 7: relative error under 1e-7
# (float32's own rounding), checked against numpy in the tests
_EXP2_COEFFS = tuple(np.float32(math.log(2.0) ** k / math.factorial(k)) for k in range(8))

if numba is not None:
    _P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7 = _EXP2_COEFFS
    _LO, _HI, _HALF = np.float32(-126.0), np.float32(127.0), np.float32(0.5)

    @intrinsic
    def _float_from_bits(typingctx, bits):
        """The float32 whose IEEE bits are ``bits`` (an int32): a register move LLVM vectorises."""
        if bits != types.int32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    @numba.njit(inline="always", fastmath=True, cache=True)
    def _exp2(x):
        """2**x in float32: 2**k from the exponent bits times the polynomial of the rest. Below 2**-126
        it returns 2**-126 (the state it multiplies decays by 1e-38: an absolute error under any tolerance)."""
        x = min(max(x, _LO), _HI)
        k = np.floor(x + _HALF)
        f = x - k
        p = _P7 * f + _P6
        p = p * f + _P5
        p = p * f + _P4
        p = p * f + _P3
        p = p * f + _P2
        p = p * f + _P1
        p = p * f + _P0
        return p * _float_from_bits(np.int32((np.int32(k) + np.int32(127)) << 23))

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def exp2_array(x, out):
        """``_exp2`` over an array (for the tests)."""
        for i in range(x.size):
            out[i] = _exp2(x[i])

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def _gather(block, groups, src, out):
        """A block's E channels of ``src``, a view indexed [t, b, d] of whatever layout the caller has, into a
        contiguous (L, E) buffer (the inner loop runs along the smaller stride)."""
        length, e_size = out.shape
        b, d0 = block // groups, (block % groups) * e_size
        if src.strides[0] < src.strides[2]:  # mamba-ssm's (B, D, L): time is contiguous
            for e in range(e_size):
                for t in range(length):
                    out[t, e] = src[t, b, d0 + e]
        else:
            for t in range(length):
                for e in range(e_size):
                    out[t, e] = src[t, b, d0 + e]

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def _gather_inputs(block, groups, u, delta, Bv, Cv, ul, dl, dul, bl, cl):
        """u, delta, delta * u (L, E) and B, C (L, N) of one block; Bv, Cv are views indexed [t, b, g, n]."""
        b, g = block // groups, block % groups
        _gather(block, groups, u, ul)
        _gather(block, groups, delta, dl)
        for t in range(ul.shape[0]):
            for e in range(ul.shape[1]):
                dul[t, e] = dl[t, e] * ul[t, e]
            for n in range(bl.shape[1]):
                bl[t, n] = Bv[t, b, g, n]
                cl[t, n] = Cv[t, b, g, n]

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def _scatter(block, groups, src, out):
        """A block's (L, E) result into a view indexed [t, b, d] (the loop runs along the smaller stride)."""
        length, e_size = src.shape
        b, d0 = block // groups, (block % groups) * e_size
        if out.strides[0] < out.strides[2]:
            for e in range(e_size):
                for t in range(length):
                    out[t, b, d0 + e] = src[t, e]
        else:
            for t in range(length):
                for e in range(e_size):
                    out[t, b, d0 + e] = src[t, e]

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def _forward_kernel(u, delta, A2, Bv, Cv, Dv, y, kept, chunk, lo, hi):
        """y (a view indexed [t, b, d]) for blocks lo..hi; ``kept`` (L / chunk, B, G, N, E) gets the state at
        every chunk start (an empty first axis: inference, nothing kept); ``Dv`` empty: no skip term."""
        length, groups, n_size, e_size = u.shape[0], A2.shape[0], A2.shape[1], A2.shape[2]
        keep, has_d = kept.shape[0] > 0, Dv.shape[0] > 0
        seqs = np.empty((4, length, e_size), dtype=np.float32)
        ul, dl, dul, yl = seqs[0], seqs[1], seqs[2], seqs[3]
        bl, cl = np.empty((length, n_size), dtype=np.float32), np.empty((length, n_size), dtype=np.float32)
        h = np.empty((n_size, e_size), dtype=np.float32)
        for block in range(lo, hi):
            b, g = block // groups, block % groups
            _gather_inputs(block, groups, u, delta, Bv, Cv, ul, dl, dul, bl, cl)
            a2 = A2[g]
            h[:] = 0.0
            for t in range(length):
                if keep and t % chunk == 0:
                    kept[t // chunk, b, g] = h
                yt, dlt, dut = yl[t], dl[t], dul[t]
                if has_d:
                    for e in range(e_size):
                        yt[e] = Dv[g * e_size + e] * ul[t, e]
                else:
                    yt[:] = 0.0
                for n in range(n_size):
                    bn, cn, hn, an = bl[t, n], cl[t, n], h[n], a2[n]
                    for e in range(e_size):
                        v = _exp2(dlt[e] * an[e]) * hn[e] + dut[e] * bn
                        hn[e] = v
                        yt[e] += cn * v
            _scatter(block, groups, yl, y)

    @numba.njit(nogil=True, fastmath=True, cache=True)
    # noqa: C901 below: one compiled loop nest (chunks, recomputed states, the reverse pass); split into Python
    # functions it would cost a call per element inside numba
    def _backward_kernel(dy, u, delta, A, A2, Bv, Cv, Dv, kept, chunk, d_u, d_delta, d_A, d_B, d_C, d_D, lo, hi):  # noqa: C901
        """Gradients of blocks lo..hi: d_u, d_delta (of delta after softplus), d_B, d_C written through views
        like the inputs'; ``d_A`` (B, G, N, E) and ``d_D`` (B, D) hold one partial sum per batch element."""
        length, groups, n_size, e_size = u.shape[0], A2.shape[0], A2.shape[1], A2.shape[2]
        has_d = Dv.shape[0] > 0
        seqs = np.empty((6, length, e_size), dtype=np.float32)
        ul, dl, dul, dyl, gu, gd = seqs[0], seqs[1], seqs[2], seqs[3], seqs[4], seqs[5]
        bl, cl = np.empty((length, n_size), dtype=np.float32), np.empty((length, n_size), dtype=np.float32)
        hs = np.empty((chunk, n_size, e_size), dtype=np.float32)  # one chunk's states
        ea = np.empty((chunk, n_size, e_size), dtype=np.float32)  # and its exp(delta A)
        carry = np.empty((n_size, e_size), dtype=np.float32)  # exp(delta_{t+1} A) g_{t+1}
        for block in range(lo, hi):
            b, g = block // groups, block % groups
            d0 = g * e_size
            _gather_inputs(block, groups, u, delta, Bv, Cv, ul, dl, dul, bl, cl)
            _gather(block, groups, dy, dyl)
            a, a2, acc = A[g], A2[g], d_A[b, g]
            carry[:] = 0.0
            for c in range((length + chunk - 1) // chunk - 1, -1, -1):
                s = c * chunk
                steps = min(chunk, length - s)
                h0 = kept[c, b, g]
                for i in range(steps):
                    prev, dlt, dut = h0 if i == 0 else hs[i - 1], dl[s + i], dul[s + i]
                    for n in range(n_size):
                        bn, an, pn, en, hn = bl[s + i, n], a2[n], prev[n], ea[i, n], hs[i, n]
                        for e in range(e_size):
                            x = _exp2(dlt[e] * an[e])
                            en[e] = x
                            hn[e] = x * pn[e] + dut[e] * bn
                for i in range(steps - 1, -1, -1):
                    t = s + i
                    prev = h0 if i == 0 else hs[i - 1]
                    dyt, dlt, dut, ddu, dd = dyl[t], dl[t], dul[t], gu[t], gd[t]
                    ddu[:] = 0.0
                    dd[:] = 0.0
                    for n in range(n_size):
                        bn, cn, an, accn, cr = bl[t, n], cl[t, n], a[n], acc[n], carry[n]
                        pn, en, hn = prev[n], ea[i, n], hs[i, n]
                        sum_b = np.float32(0.0)
                        sum_c = np.float32(0.0)
                        for e in range(e_size):
                            grad = cn * dyt[e] + cr[e]  # dL/dh_t
                            ddu[e] += bn * grad
                            sum_b += dut[e] * grad
                            sum_c += dyt[e] * hn[e]
                            x = grad * en[e] * pn[e]
                            dd[e] += x * an[e]
                            accn[e] += x * dlt[e]
                            cr[e] = en[e] * grad
                        d_B[t, b, g, n] = sum_b
                        d_C[t, b, g, n] = sum_c
            # chain rule through du = delta * u and the skip term D * u
            for t in range(length):
                for e in range(e_size):
                    gdu = gu[t, e]
                    gd[t, e] += gdu * ul[t, e]
                    gu[t, e] = gdu * dl[t, e]
                    if has_d:
                        gu[t, e] += dyl[t, e] * Dv[d0 + e]
                        d_D[b, d0 + e] += dyl[t, e] * ul[t, e]
            _scatter(block, groups, gu, d_u)
            _scatter(block, groups, gd, d_delta)


# The kernels' arguments, the one place their order and types are written (mamba-ssm passes one params record to
# its kernels; numba takes plain arguments): the signatures are built from these records, the calls pass the
# arguments by name (_call), and _check_records holds each kernel's own parameter list to its record.
# One signature per kernel, compiled (or loaded from numba's cache) at the first scan of a process: every
# caller's layout (mamba-ssm's, time-major, contiguous or not) reaches them as strided ('A') views, so no other
# layout combination triggers another compilation of several seconds.
_VIEW3, _VIEW4, _GNE, _KEPT = "float32[:, :, :]", "float32[:, :, :, :]", "float32[:, :, ::1]", "float32[:, :, :, :, ::1]"
_ARGS = {
    "_forward_kernel": (("u", _VIEW3), ("delta", _VIEW3), ("A2", _GNE), ("Bv", _VIEW4), ("Cv", _VIEW4),
                        ("Dv", "float32[::1]"), ("y", _VIEW3), ("kept", _KEPT), ("chunk", "int64")),
    "_backward_kernel": (("dy", _VIEW3), ("u", _VIEW3), ("delta", _VIEW3), ("A", _GNE), ("A2", _GNE), ("Bv", _VIEW4),
                         ("Cv", _VIEW4), ("Dv", "float32[::1]"), ("kept", _KEPT), ("chunk", "int64"), ("d_u", _VIEW3),
                         ("d_delta", _VIEW3), ("d_A", "float32[:, :, :, ::1]"), ("d_B", _VIEW4), ("d_C", _VIEW4),
                         ("d_D", "float32[:, ::1]")),
}
_BOUNDS = ("lo", "hi")  # every kernel's last two arguments: the (batch, group) blocks it runs, from _in_blocks
_SIGNATURES = {name: f"void({', '.join([t for _, t in args] + ['int64', 'int64'])})" for name, args in _ARGS.items()}


def _check_records() -> None:
    """Each kernel's parameters are its record's names, in order, then lo and hi (an edit of one without the
    other fails at import, not with wrong gradients)."""
    import inspect

    for name, args in _ARGS.items():
        params = tuple(inspect.signature(globals()[name].py_func).parameters)
        expected = (*(a for a, _ in args), *_BOUNDS)
        if params != expected:
            raise RuntimeError(f"das2f.ops.scan_cpu: {name} takes {params}, its record (_ARGS) says {expected}")


def _call(name: str, blocks: int, **arrays) -> None:
    """Run kernel ``name`` over ``blocks`` blocks with its arguments by name (numba arrays or ints)."""
    _in_blocks(globals()[name], tuple(arrays[a] for a, _ in _ARGS[name]), blocks)


if IMPORT_ERROR is None:
    _check_records()


@functools.lru_cache(maxsize=1)
def _compiled() -> str:
    """Compiles the kernels, or loads them from numba's cache; says which and how long it took."""
    t = time.perf_counter()
    for name, signature in _SIGNATURES.items():
        kernel = globals()[name]
        kernel.compile(signature)
        kernel.disable_compile()
    how = "loaded from numba's cache" if _forward_kernel.stats.cache_hits else "compiled into numba's cache"
    message = f"cpu scan kernels {how} in {time.perf_counter() - t:.1f} s"
    log.debug(message)
    return message


def compile_kernels() -> None:
    """`make install` runs this once: the first scan of every later process loads the kernels from the cache
    (about 0.5 s) instead of compiling them (about 9 s)."""
    if IMPORT_ERROR is not None:
        print(f"cpu scan backend unavailable, scans will use the torch backend: {IMPORT_ERROR}")
        return
    print(_compiled())


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (the process that made it, its size, the pool)


def _in_blocks(kernel, args, blocks: int) -> None:
    """Run ``kernel(*args, lo, hi)`` over [0, blocks), split over torch's thread count."""
    _compiled()
    threads = max(1, min(torch.get_num_threads(), blocks))
    if threads == 1:
        kernel(*args, 0, blocks)
        return
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:  # a forked child makes its own
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="das2f-scan"))
    bounds = [blocks * i // threads for i in range(threads + 1)]
    futures = [_POOL[2].submit(kernel, *args, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    for f in futures:
        f.result()  # re-raises a kernel's error here


def _array(t):
    return t.detach().numpy()


_LOG2E = 1.4426950408889634  # exp(x) = 2**(x log2 e)


def _chunks(length: int) -> int:
    return (length + DEFAULT_CHUNK - 1) // DEFAULT_CHUNK


# The kernels as two torch operators (torch.library.custom_op): torch.compile (model.compile=true) sees each as one
# opaque call with known output shapes (register_fake) and compiles the graph around the scan without a break.
@torch.library.custom_op("das2f::scan_cpu_forward", mutates_args=())
def _forward_op(u: torch.Tensor, delta: torch.Tensor, A_t: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor, keep: bool, time_major: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 operands in the caller's layout (delta after bias and softplus; A_t (G, N, E); D empty: none)
    -> y in that layout and the states kept every chunk (an empty first axis without ``keep``)."""
    u_v, delta_v, B_v, C_v = _time_major_views(time_major, u, delta, B, C)
    length, b = u_v.shape[:2]
    g, n, e = A_t.shape
    kept = u.new_empty(_chunks(length) if keep else 0, b, g, n, e)
    y = u.new_empty(u.shape)
    (y_v,) = _time_major_views(time_major, y)
    _call("_forward_kernel", b * g, u=_array(u_v), delta=_array(delta_v), A2=_array(A_t * _LOG2E), Bv=_array(B_v),
          Cv=_array(C_v), Dv=_array(D), y=_array(y_v), kept=_array(kept), chunk=DEFAULT_CHUNK)
    return y, kept


@_forward_op.register_fake
def _(u, delta, A_t, B, C, D, keep, time_major):
    length, b = (u.shape[0], u.shape[1]) if time_major else (u.shape[2], u.shape[0])
    return u.new_empty(u.shape), u.new_empty(_chunks(length) if keep else 0, b, *A_t.shape)


@torch.library.custom_op("das2f::scan_cpu_backward", mutates_args=())
def _backward_op(dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A_t: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor, kept: torch.Tensor, time_major: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of u, delta (after softplus), A_t, B, C, D (empty when D is) from dy, all float32."""
    b = u.shape[1] if time_major else u.shape[0]
    g, n, e = A_t.shape
    d_u, d_delta, d_B, d_C = (t.new_empty(t.shape) for t in (u, u, B, C))
    d_A_parts = u.new_zeros(b, g, n, e)
    d_D_parts = u.new_zeros(b if D.numel() else 0, g * e)
    views = dict(zip(("dy", "u", "delta", "Bv", "Cv", "d_u", "d_delta", "d_B", "d_C"),
                     map(_array, _time_major_views(time_major, dy, u, delta, B, C, d_u, d_delta, d_B, d_C))))
    _call("_backward_kernel", b * g, **views, A=_array(A_t), A2=_array(A_t * _LOG2E), Dv=_array(D), kept=_array(kept),
          chunk=DEFAULT_CHUNK, d_A=_array(d_A_parts), d_D=_array(d_D_parts))
    return d_u, d_delta, d_A_parts.sum(0), d_B, d_C, d_D_parts.sum(0)


@_backward_op.register_fake
def _(dy, u, delta, A_t, B, C, D, kept, time_major):
    return (u.new_empty(u.shape), u.new_empty(u.shape), A_t.new_empty(A_t.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(D.shape))


class SelectiveScanCPU(torch.autograd.Function):
    """The scan in one autograd node whose recurrence, delta * u and D * u run in the numba kernels above;
    bias and softplus (vectorised elementwise work) stay in torch. Layouts: mamba-ssm's, or time-major
    (``time_major``); the kernels read and write both through strided views, no transposing copy.
    Inputs of any floating dtype but float64 (the caller routes that to the torch backend): computed in
    float32, returned in u's dtype, gradients in each input's dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, time_major):
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, delta_bias)]
        with torch.autocast("cpu", enabled=False):
            u, delta, A, B, C, D, delta_bias = (None if t is None else t.float() for t in
                                                (u, delta, A, B, C, D, delta_bias))
            g = B.shape[2] if time_major else B.shape[1]
            n, e = A.shape[1], A.shape[0] // g
            x = delta if delta_bias is None else delta + (delta_bias if time_major else delta_bias[:, None])
            delta_sp = F.softplus(x) if delta_softplus else x
            A_t = A.reshape(g, e, n).transpose(1, 2).contiguous()  # (G, N, E)
            D = u.new_empty(0) if D is None else D
            needs = ctx.needs_input_grad
            keep = any(needs[i] for i in (0, 1, 2, 3, 4, 6))  # everything but D goes through the states
            y, kept = _forward_op(u, delta_sp, A_t, B, C, D, keep, time_major)
        ctx.save_for_backward(u, x if delta_softplus else None, delta_sp, A_t, B, C, D, kept)
        ctx.config = (delta_softplus, keep, delta_bias is not None, time_major)
        return y.to(ctx.dtypes[0])

    @staticmethod
    def backward(ctx, dy):
        u, x, delta_sp, A_t, B, C, D, kept = ctx.saved_tensors
        delta_softplus, keep, has_bias, time_major = ctx.config
        needs = ctx.needs_input_grad
        g, n, e = A_t.shape
        d_u = d_delta = d_A = d_B = d_C = d_D = d_bias = None
        with torch.autocast("cpu", enabled=False):
            dy = dy.float()
            if not keep:  # only D asked for a gradient
                d_D = (dy * u).sum(dim=(0, 1) if time_major else (0, 2))
            else:
                d_u, d_x, d_A_t, d_B, d_C, d_D = _backward_op(dy, u, delta_sp, A_t, B, C, D, kept, time_major)
                d_A = d_A_t.transpose(1, 2).reshape(g * e, n)
                if delta_softplus:
                    d_x = d_x * torch.sigmoid(x)
                d_delta = d_x
                if has_bias and needs[6]:
                    d_bias = d_x.sum(dim=(0, 1) if time_major else (0, 2))
        grads = (d_u, d_delta, d_A, d_B, d_C, d_D if needs[5] and D.numel() else None, d_bias)
        return tuple(None if t is None else t.to(dtype) for t, dtype in zip(grads, ctx.dtypes)) + (None, None)


def _time_major_views(time_major: bool, *tensors):
    """Views indexed [t, b, d] (3-D) or [t, b, g, n] (4-D) of tensors in the caller's layout."""
    if time_major:
        return tensors
    return tuple(t.permute(2, 0, 1) if t.dim() == 3 else t.permute(3, 0, 1, 2) for t in tensors)
