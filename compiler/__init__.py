"""The pipec compiler: AST -> IR (a networkx graph of typed operations), checks,
capabilities and the schedule of blocks. Never imports the runtime or an engine.

``build`` lowers the AST and orchestrates the leaf modules, none of which imports it:
``scopes`` (bindings and regions), ``signatures`` (calls into user modules, read as
source through ``modules``), ``options`` (stage and actor options), ``constants``
(literals and constant folding, with the operator table of ``operators``, which the
runtime shares and which imports nothing), ``lints`` (warnings on the finished IR) and
``reporter`` (diagnostics). ``ir`` holds the typed operations; ``capabilities``,
``schedule`` and ``render`` read the IR.
"""
