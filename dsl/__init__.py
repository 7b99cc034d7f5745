"""The pipec front end: source text -> frozen AST, diagnostics, formatter."""
