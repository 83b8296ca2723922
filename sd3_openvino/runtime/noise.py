"""Gaussian noise without torch: the numbers of `torch.randn` on CPU, so a seed gives diffusers' image.

`TorchCPUGenerator` is torch's CPU generator in numpy: the same mt19937 stream (seeded as `manual_seed` seeds it)
and the same normal samples as torch's CPU `normal_` kernel. `openvino_genai.TorchGenerator` cannot serve here: it
wraps a `torch.Generator` and imports torch. torch draws tensors of 16 or more float32 values in blocks of 16
uniforms turned into normals by Box-Muller; on x86 CPUs with AVX2 (AVX-512 CPUs too: torch runs its AVX2 kernel
for `normal_`) the log, sin and cos are the polynomials of its `avx_mathfun.h`, ported here operation for operation,
fused multiply-adds included, so the samples are bit-identical. Other CPUs run torch's scalar kernel (the C
library's logf/sinf/cosf), matched here to within 1 ulp. Tensors of fewer than 16 values use torch's
double-precision Box-Muller, whose second sample the generator keeps for its next draw, as torch does.

A user's own `torch.Generator` still works: `randn_tensor` imports torch only when one is passed.
Imports numpy only.
"""

import functools
import math
import os
import platform
import secrets
from pathlib import Path

import numpy as np

F32 = np.float32
TORCH_DEFAULT_SEED = 67280421310721  # the seed of a `torch.Generator()` that was never seeded
MT_STATE_SIZE = 624
BLOCK = 16  # torch's normal_fill turns 16 uniforms into 16 normals (8 cosines, 8 sines)
FLOAT_MANTISSA_BITS, DOUBLE_MANTISSA_BITS = 24, 53

# Adapted from pytorch aten/src/ATen/native/cpu/avx_mathfun.h (G. Garberoglio's AVX port of J. Pommier's sse_mathfun,
# zlib license; ported to numpy here, altered): the cephes constants, as float32
LOG_POLYNOMIAL = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1)
LOG_POLYNOMIAL += (-1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
LOG_Q1, LOG_Q2, SQRT_HALF = -2.12194440e-4, 0.693359375, 0.707106781186547524
PI_PARTS = (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8)  # -pi/4 in three parts
SIN_POLYNOMIAL = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
COS_POLYNOMIAL = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
FOUR_OVER_PI = 1.27323954473516


def _fma(a: np.ndarray, b, c) -> np.ndarray:
    """float32 a * b + c rounded once, as the fused multiply-add of the AVX2 kernel (the product is exact in float64)."""
    return (np.float64(1) * a * np.float64(b) + c).astype(F32)


def _log_avx2(x: np.ndarray) -> np.ndarray:
    """torch's AVX2 `log256_ps` on float32 values in (0, 1]."""
    # Adapted from pytorch avx_mathfun.h log256_ps
    bits = np.maximum(x, np.finfo(F32).tiny).view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(F32) + F32(1)
    x = ((bits & ~0x7F800000) | F32(0.5).view(np.int32)).view(F32)  # the mantissa, in [0.5, 1)
    below = x < F32(SQRT_HALF)
    x = (x - F32(1)) + np.where(below, x, F32(0))
    e = e - below.astype(F32)
    z = x * x
    y = np.full_like(x, F32(LOG_POLYNOMIAL[0]))
    for coefficient in LOG_POLYNOMIAL[1:]:
        y = _fma(y, x, F32(coefficient))
    y = _fma(y * x, z, e * F32(LOG_Q1))
    y = y - z * F32(0.5)
    return _fma(e, F32(LOG_Q2), x + y)


def _sincos_avx2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch's AVX2 `sincos256_ps` on float32 values in [0, 2 pi)."""
    # Adapted from pytorch avx_mathfun.h sincos256_ps
    sign_sin = np.signbit(x)
    x = np.abs(x)
    octant = ((x * F32(FOUR_OVER_PI)).astype(np.int32) + 1) & ~1
    y = octant.astype(F32)
    sign_sin ^= (octant & 4) != 0
    sign_cos = (~(octant - 2) & 4) != 0
    use_sin_polynomial = (octant & 2) == 0
    for part in PI_PARTS:
        x = _fma(y, F32(part), x)
    z = x * x
    cosine = _fma(_fma(np.full_like(z, F32(COS_POLYNOMIAL[0])), z, F32(COS_POLYNOMIAL[1])), z, F32(COS_POLYNOMIAL[2])) * z
    cosine = _fma(cosine, z, -(z * F32(0.5))) + F32(1)
    sine = _fma(_fma(np.full_like(z, F32(SIN_POLYNOMIAL[0])), z, F32(SIN_POLYNOMIAL[1])), z, F32(SIN_POLYNOMIAL[2])) * z
    sine = _fma(sine, x, x)
    sin, cos = np.where(use_sin_polynomial, sine, cosine), np.where(use_sin_polynomial, cosine, sine)
    return np.where(sign_sin, -sin, sin), np.where(sign_cos, -cos, cos)


def _box_muller_blocks(uniforms: np.ndarray, *, kernel: str) -> np.ndarray:
    """torch's `normal_fill_16` on (N * 16,) float32 uniforms in [0, 1): per block, 8 cosines then 8 sines."""
    blocks = uniforms.reshape(-1, BLOCK)
    u1, u2 = F32(1) - blocks[:, : BLOCK // 2], blocks[:, BLOCK // 2 :]  # u1 in (0, 1] for the log
    if kernel == "avx2":
        radius = np.sqrt(F32(-2) * _log_avx2(u1))
        sin, cos = _sincos_avx2(F32(2.0 * math.pi) * u2)
    else:  # the C library's float functions, to within 1 ulp
        radius = np.sqrt(F32(-2) * np.log(u1.astype(np.float64)).astype(F32))
        theta = (2.0 * math.pi * u2.astype(np.float64)).astype(F32).astype(np.float64)
        sin, cos = np.sin(theta).astype(F32), np.cos(theta).astype(F32)
    return np.concatenate([radius * cos, radius * sin], axis=1).reshape(-1)


@functools.cache
def torch_normal_kernel() -> str:
    """"avx2" where torch's CPU `randn` runs its AVX2 kernel (x86 CPUs with AVX2), else "default".
    `ATEN_CPU_CAPABILITY=default` makes torch use its scalar kernel; it is honoured here too."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default":
        return "default"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    cpuinfo = Path("/proc/cpuinfo")
    has_avx2 = " avx2" in cpuinfo.read_text() if cpuinfo.is_file() else True  # every x86 CPU of the last decade
    return "avx2" if has_avx2 else "default"


class TorchCPUGenerator:
    """`torch.Generator()` (CPU) in numpy: `TorchCPUGenerator(seed).randn(shape)` equals
    `torch.randn(shape, generator=torch.Generator().manual_seed(seed))`, and later draws continue the stream."""

    def __init__(self, seed: int = TORCH_DEFAULT_SEED):
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "TorchCPUGenerator":
        """Seed as torch does: mt19937 from the low 32 bits of `seed`, and no cached normal sample."""
        # Adapted from pytorch aten/src/ATen/core/MT19937RNGEngine.h init_with_uint32
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` has to be an int but is {type(seed).__name__}: {seed!r:.80}.")
        self._seed = int(seed) % 2**64
        state = [self._seed & 0xFFFFFFFF]
        for index in range(1, MT_STATE_SIZE):
            state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + index) & 0xFFFFFFFF)
        self._engine = np.random.MT19937()
        self._engine.state = {"bit_generator": "MT19937", "state": {"key": np.array(state, dtype=np.uint32), "pos": MT_STATE_SIZE}}
        self._next_double_normal = None
        return self

    def initial_seed(self) -> int:
        return self._seed

    def _uniform_floats(self, count: int) -> np.ndarray:
        """(count,) float32 in [0, 1): 24 random bits of one 32-bit draw each."""
        bits = self._engine.random_raw(count) & ((1 << FLOAT_MANTISSA_BITS) - 1)
        return bits.astype(F32) * F32(2.0**-FLOAT_MANTISSA_BITS)

    def _uniform_double(self) -> float:
        """A float64 in [0, 1) from two 32-bit draws (high word first), 53 bits."""
        high, low = (int(value) for value in self._engine.random_raw(2))
        return (((high << 32) | low) & ((1 << DOUBLE_MANTISSA_BITS) - 1)) / 2.0**DOUBLE_MANTISSA_BITS

    def _normal_double(self) -> float:
        """torch's `normal_distribution<double>`: Box-Muller, the sine kept for the next call."""
        # Adapted from pytorch aten/src/ATen/core/DistributionsHelper.h normal_distribution
        if self._next_double_normal is not None:
            value, self._next_double_normal = self._next_double_normal, None
            return value
        u1, u2 = self._uniform_double(), self._uniform_double()
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_double_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 standard normal samples of `shape`, the next ones torch would draw from this generator."""
        # Adapted from pytorch aten/src/ATen/native/cpu/DistributionTemplates.h normal_kernel / normal_fill
        shape = tuple(int(size) for size in shape)
        count = math.prod(shape)
        if count < BLOCK:
            return np.array([self._normal_double() for _ in range(count)], dtype=F32).reshape(shape)
        kernel = torch_normal_kernel()
        uniforms = self._uniform_floats(count)
        full = count - count % BLOCK
        samples = np.empty(count, dtype=F32)
        samples[:full] = _box_muller_blocks(uniforms[:full], kernel=kernel)
        if full < count:  # torch redraws 16 uniforms for the last 16 values
            samples[count - BLOCK :] = _box_muller_blocks(self._uniform_floats(BLOCK), kernel=kernel)
        return samples.reshape(shape)


def is_torch_generator(generator) -> bool:
    """True for a `torch.Generator`, told apart without importing torch."""
    return type(generator).__name__ == "Generator" and type(generator).__module__.startswith("torch")


def _randn_one(shape: tuple[int, ...], generator) -> np.ndarray:
    """float32 standard normal noise of `shape` from one generator (advancing its state, as torch does)."""
    if isinstance(generator, TorchCPUGenerator):
        return generator.randn(shape)
    if is_torch_generator(generator):
        import torch

        if generator.device.type != "cpu":
            raise ValueError(f"Cannot generate a cpu tensor from a generator of type {generator.device.type}; pass a CPU `torch.Generator`.")
        return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()
    raise TypeError(
        "`generator` has to be None, a seed (int), a `TorchCPUGenerator`, a `torch.Generator`, or a list of these, "
        f"one per image, but is {type(generator).__name__}."
    )


def randn_tensor(shape: tuple[int, ...], *, generator=None) -> np.ndarray:
    """float32 noise of `shape` as diffusers' `randn_tensor` makes it on CPU.

    `generator` is a `torch.Generator`, a `TorchCPUGenerator`, an int seed (a fresh generator), None (a random
    seed), or a list of these, one per batch item (`shape[0]`), each giving a (1, ...) slice.
    """
    # Adapted from diffusers.utils.torch_utils.randn_tensor
    shape = tuple(int(size) for size in shape)
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"You have passed a list of {len(generator)} generators, but requested an effective batch size of {shape[0]}.")
        return np.concatenate([randn_tensor((1,) + shape[1:], generator=item) for item in generator], axis=0)
    if generator is None:
        generator = secrets.randbits(63)
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        generator = TorchCPUGenerator(generator)
    return _randn_one(shape, generator)


def randn_like_torch(shape: tuple[int, ...], *, seed: int) -> np.ndarray:
    """`torch.randn(shape, generator=torch.Generator().manual_seed(seed))` on CPU as float32 numpy, without torch."""
    return TorchCPUGenerator(seed).randn(shape)
