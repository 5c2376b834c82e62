"""Build of baffle's one C extension, the noise spec v2 kernel (everything else is in pyproject.toml).

Optional: where no C compiler is available the build goes on without it and baffle generates v2 directions
with numpy instead (bit-identical, slower; ``baffle.protocol.noise_kernel.status()`` says which is in use).
-ffp-contract=off keeps the float32 products and sums of the spec unfused, so the kernel's bits equal numpy's.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "baffle.protocol._noise_kernel",
            sources=["src/baffle/protocol/noise_kernel.c"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c11"],
            optional=True,
        )
    ]
)
