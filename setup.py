"""Package list for setuptools: medgen's packages plus ``conf/`` installed as ``medgen.conf``.

Everything else lives in pyproject.toml. The top-level ``conf/`` keeps the usual Hydra project layout
in the source tree; in a wheel it becomes ``medgen/conf`` so an installed ``medgen`` finds its configs.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["medgen", "medgen.*"]), "medgen.conf"],
    package_dir={"medgen.conf": "conf"},
)
