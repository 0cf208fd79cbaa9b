"""Shared fixtures: the `sparse-infer` binary that `cargo build --release` made."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def sparse_infer_bin() -> pathlib.Path:
    """Path of the CLI binary: $SPARSE_INFER_BIN, else <repo>/target/release/sparse-infer."""
    path = pathlib.Path(os.environ.get("SPARSE_INFER_BIN", REPO / "target" / "release" / "sparse-infer"))
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build --release` first (scripts/test does)")
    return path


@pytest.fixture(scope="session")
def run_cli(sparse_infer_bin):
    """Runs the CLI, asserts success, returns the JSON of its last stdout line."""
    import json

    def run(*args: str) -> dict:
        out = subprocess.run([str(sparse_infer_bin), *map(str, args)], capture_output=True, text=True)
        assert out.returncode == 0, f"{args}: {out.stderr}"
        return json.loads(out.stdout.strip().splitlines()[-1])

    return run
