"""Installs ``components/`` and ``pipelines/`` (the layout's top-level folders) as ``embedpipe.components`` and
``embedpipe.pipelines``, so the KFP wrappers and pipeline definitions ship in the one distribution."""

from setuptools import find_packages, setup

MAPPED = {"embedpipe.components": "components", "embedpipe.pipelines": "pipelines"}

packages = find_packages(include=["embedpipe", "embedpipe.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir={"embedpipe": "embedpipe", **MAPPED})
