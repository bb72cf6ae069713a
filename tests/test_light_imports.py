"""The command line answers without torch: `--help` and config errors must not wait ~3 s for it.

Each check runs a fresh interpreter, because this test process has long imported torch.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# The modules the search's command line imports before it runs a trial.
LIGHT_MODULES = ("lorsp.errors", "lorsp.config", "lorsp.search", "lorsp.samplers", "lorsp.searcher", "lorsp.tune")


def test_command_line_modules_do_not_import_torch():
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported torch')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_errors_keep_their_old_homes():
    from lorsp.config import ConfigError
    from lorsp.data import DataError
    from lorsp.errors import ConfigError as Config
    from lorsp.errors import DataError as Data

    assert ConfigError is Config and DataError is Data
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


def test_tune_help_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "lorsp.tune", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")
