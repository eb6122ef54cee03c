"""Builds the native ai.qcompiler op library (runtime_ops/_lib/libqcompiler_ops.so) with CMake.

Everything else about the package lives in pyproject.toml. The build fetches onnxruntime's C/C++
headers (runtime_ops/fetch_ort_headers.sh), configures and builds with CMake, and places the
library where qcompiler.ops.library_path() finds it (in the source tree for editable installs).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
LIB_NAME = "libqcompiler_ops.so"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            self._build(ext)
        except (subprocess.CalledProcessError, OSError) as e:
            raise RuntimeError(
                f"building the native library {LIB_NAME} failed: {e}\n"
                "needs cmake, a C/C++ compiler and apt-get access to Debian's libonnxruntime-dev "
                "headers (see runtime_ops/fetch_ort_headers.sh); run `make native` for the full log"
            ) from e

    def _build(self, ext: Extension) -> None:
        if shutil.which("cmake") is None:
            raise OSError("cmake not found on PATH")
        headers = subprocess.run(
            ["bash", str(ROOT / "runtime_ops" / "fetch_ort_headers.sh")],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.strip().splitlines()[-1]
        build_dir = ROOT / "build" / "runtime_ops"
        subprocess.run(
            ["cmake", "-S", str(ROOT / "runtime_ops"), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
             f"-DORT_INCLUDE_DIR={headers}/include"],
            check=True, stdout=sys.stderr,
        )
        subprocess.run(["cmake", "--build", str(build_dir), "-j2", "--target", "qcompiler_ops"],
                       check=True, stdout=sys.stderr)
        built = build_dir / LIB_NAME
        targets = [Path(self.get_ext_fullpath(ext.name))]
        in_tree = ROOT / "runtime_ops" / "_lib" / LIB_NAME
        if in_tree not in targets:
            targets.append(in_tree)  # editable installs import qcompiler.ops from the source tree
        for dest in targets:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(built, tmp)
            os.replace(tmp, dest)

    def get_ext_filename(self, fullname: str) -> str:
        # A plain shared library loaded by onnxruntime, not a Python extension: no ABI suffix.
        return os.path.join(*fullname.split(".")[:-1], LIB_NAME)


class PlatformWheel(bdist_wheel):
    """py3-none-<platform>: the library is loaded by onnxruntime, not by Python, so one wheel serves
    every Python version the package supports; only the platform (and, after auditwheel, the
    glibc) matters."""

    def get_tag(self):
        _python, _abi, plat = super().get_tag()
        return "py3", "none", plat


setup(
    ext_modules=[CMakeExtension("qcompiler.ops._lib.libqcompiler_ops")],
    cmdclass={"build_ext": CMakeBuild, "bdist_wheel": PlatformWheel},
)
