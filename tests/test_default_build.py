"""models/default/build.py, run as the model card says: it must never
replace the shipped default by accident."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_build_refuses_an_out_that_is_a_symlink_and_leaves_link_and_target_alone(tmp_path):
    """engine/mailsift/data/default-model.npz is a symlink to the shipped file:
    a save through it renamed a candidate over the link, so the package
    shipped it while build.py printed 'a candidate, not shipped'."""
    target = tmp_path / "model.npz"
    target.write_bytes(b"shipped")
    link = tmp_path / "default-model.npz"
    link.symlink_to(target)
    env = {**os.environ, "MAILSIFT_TREC07P": str(tmp_path / "no-trec07p")}  # no build if it got that far
    r = subprocess.run(
        [sys.executable, str(ROOT / "models" / "default" / "build.py"), "--out", str(link)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1 and "is a symlink" in r.stderr, r.stderr
    assert link.is_symlink() and target.read_bytes() == b"shipped"
