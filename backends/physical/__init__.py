"""The physical plan: what runs between the IR and the engines, planned once.

:mod:`.steps` is its vocabulary (segments: a head, fused element-wise steps, a terminal;
the combine nodes of a reduction), which every engine ships to its workers and the one
interpreter (:mod:`pipec.backends.runtime.interpreter`) runs. Importing this package is
cheap: workers import it.
"""
