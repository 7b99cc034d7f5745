"""The pipec compiler: AST -> IR, checks, capabilities, schedule, the CLI and the API.

``from compiler import load`` is the Python API (see :mod:`compiler.api`); it is
imported lazily so that ``import compiler.ir`` stays cheap.
"""


def __getattr__(name: str):
    if name in ("load", "Pipeline"):
        from compiler import api
        return getattr(api, name)
    raise AttributeError(name)
