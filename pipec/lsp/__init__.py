"""The pipec language server (``pipec lsp``): diagnostics as you type, hover, go to
definition, completion, formatting, the outline and rename, for `.pipe` files.

It reuses the front end as it is: the parser and checker for diagnostics
(:mod:`pipec.checking`), the formatter for formatting, and the compiler's reading of
Python modules as source, so it never imports user code. It needs the ``lsp`` extra
(``pip install 'pipec[lsp]'``: pygls and lsprotocol); nothing else in pipec imports it.
"""
