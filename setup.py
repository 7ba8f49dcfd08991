"""Ships the top-level conf/ inside the package (embedexp/conf) so a non-editable install finds its configs.

Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "conf"
        if src.is_dir() and not self.editable_mode:
            dst = Path(self.build_lib) / "embedexp" / "conf"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildPyWithConf})
