"""Maps the repository's top-level folders into the one installed ``pipec`` namespace.

The metadata lives in pyproject.toml; only the package layout is here, because it has
to be computed: ``grammar/``, ``dsl/``, ``compiler/`` and ``backends/`` install as
``pipec.grammar``, ``pipec.dsl``, ... (so a user's own ``compiler`` or ``backends``
package never clashes with pipec's), and every subpackage is found, not listed, so a
new backend folder cannot be left out of a wheel. ``examples/``, ``tests/`` and
``benchmarks/`` are not installed.
"""

from setuptools import find_packages, setup

LAYERS = ("grammar", "dsl", "compiler", "backends")

packages = ["pipec"] + find_packages(include=["pipec.*"])  # pipec.lsp, ...
package_dir = {"pipec": "pipec"}
for layer in LAYERS:
    package_dir[f"pipec.{layer}"] = layer
    packages += [f"pipec.{name}" for name in find_packages(include=[layer, f"{layer}.*"])]

setup(packages=packages, package_dir=package_dir)
