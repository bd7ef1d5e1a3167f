"""Build glue (everything else is in pyproject.toml): the wheel carries the project's configs.

`conf/` stays at the project's top level (the layout users edit); a wheel or a non-editable install copies it
into the package as `das2f/conf`, where das2f.runtime.config finds it when no checkout is around.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install reads the checkout's conf/ itself
            shutil.copytree(Path(__file__).parent / "conf", Path(self.build_lib) / "das2f" / "conf", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithConfigs})
