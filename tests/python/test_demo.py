"""`imagerelay demo` (what `make demo` runs) tells the whole story and verifies every copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "imagerelay", "--home", str(home), "demo", "--data-mib", "32",
         "--virtual-gib", "1"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("1. import", "2. replicate", "3. a new version", "4. share",
                 "5. cancel", "6. verify", "demo finished"):
        assert step in out, out
    assert "MISMATCH" not in out
    assert out.count(" ok") == 6  # every image verified against its source digest
    assert "Sharing" in out and "images in hk: none" in out
