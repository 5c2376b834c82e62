"""Build of baffle's two C extensions (everything else is in pyproject.toml): the noise spec v2 kernel and the
batched engine's fused (convolution ->) GroupNorm -> activation -> 2x2 max-pool.

Both are optional: where no C compiler is available the build goes on without them and baffle generates v2
directions with numpy (bit-identical, slower; ``baffle.protocol.noise_kernel.status()``) and runs the three torch
ops (``baffle.engine.batched.norm_act_pool.status()``). -ffp-contract=off keeps the float32 products and sums of
the noise spec unfused, so the kernel's bits equal numpy's.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "baffle.protocol._noise_kernel",
            sources=["src/baffle/protocol/noise_kernel.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c11"],
            optional=True,
        ),
        Extension(
            "baffle.engine.batched._norm_act_pool",
            sources=["src/baffle/engine/batched/norm_act_pool.c"],
            extra_compile_args=["-O3", "-fno-fast-math", "-std=c11"],
            libraries=["m"],  # fmaf: the fused convolution's portable loop
            optional=True,
        ),
    ]
)
