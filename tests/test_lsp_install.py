"""`pipec lsp` without its extra installed says how to install it, with no traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# pygls made unimportable in the child, as in an install without the `lsp` extra
PROBE = "import sys\nsys.modules['pygls'] = None\nfrom pipec.cli import main\nsys.exit(main(['lsp']))\n"


def test_lsp_without_pygls_is_a_usage_error_with_the_fix():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr == ("error: the language server needs pygls, which is not installed\n"
                           "  = hint: pip install 'pipec[lsp]'\n")
