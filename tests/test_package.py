"""The engine's import stays light and its public surface is what the README shows."""

import subprocess
import sys

import distillmem as dm


def test_importing_the_engine_imports_neither_avalanche_nor_flower():
    code = "import sys, distillmem; print(sorted(m for m in sys.modules if m.split('.')[0] in ('avalanche', 'flwr', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_names_resolve():
    for name in dm.__all__:
        assert getattr(dm, name) is not None, name
