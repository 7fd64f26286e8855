"""The hardware package: public names load lazily, the import stays light."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light_and_every_public_name_resolves():
    code = (
        "import sys, napari_sparsefocus.hardware as h\n"
        "heavy = [m for m in ('pymmcore_plus', 'torch', 'qtpy', 'napari') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "missing = [n for n in h.__all__ if getattr(h, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert 'pymmcore_plus' in sys.modules\n"
        "print(len(h.__all__))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 20
