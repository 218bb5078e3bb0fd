"""Build the compiled modules from ``ext/``: ``tinyingest._native`` (the parsers) and
``tinyingest._encode`` (Native encoding).

Metadata lives in pyproject.toml; this file only knows about the extensions.
``TINYINGEST_REQUIRE_EXTENSIONS=1`` makes a failed build an error (CI, deploy);
otherwise the pure-Python parser is used where no compiler exists.
``TINYINGEST_DEBUG=1`` builds with line tracing, -O0 -g and invariant checks.
"""

import os

from setuptools import Extension, setup

REQUIRE = os.environ.get("TINYINGEST_REQUIRE_EXTENSIONS") == "1"
DEBUG = os.environ.get("TINYINGEST_DEBUG") == "1"


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        return []
    macros = [("TINYINGEST_DEBUG", "1"), ("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
    compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
    # The parsers, and the Native encoders (kept apart so that neither's code changes
    # how the compiler lays out the other's hot loops).
    modules = [
        Extension(
            f"tinyingest.{name}",
            [f"ext/{name}.pyx"],
            include_dirs=["ext"],
            define_macros=macros,
            extra_compile_args=compile_args,
            optional=not REQUIRE,
        )
        for name in ("_native", "_encode")
    ]
    directives = {"language_level": 3}
    if DEBUG:
        directives["linetrace"] = True
    return cythonize(modules, include_path=["ext"], compiler_directives=directives)


setup(ext_modules=extensions())
