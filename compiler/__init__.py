"""The pipec compiler: AST -> IR (a networkx graph of typed operations), checks,
capabilities and the schedule of blocks. Never imports the runtime or an engine."""
