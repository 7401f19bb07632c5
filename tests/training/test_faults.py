"""Issue 21, item 11: faults end in one line and a non-zero exit, with nothing half-written left behind."""

import os
import resource
import subprocess
import sys

import pytest

from embrecipe.errors import InputError, write_failure
from embrecipe.runs.store import RunStore


def _train_with_file_size_limit(model, data, out, limit, *extra):
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "embrecipe.cli", "train", "--model", model, "--data", data,
                           "--batch-size", "16", "--max-steps", "2", "--out", str(out), "--quiet",
                           "--report-to", "none", *extra],
                          capture_output=True, text=True, env=env, preexec_fn=limit_files)


def _leftovers(out):
    return sorted(p.name for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name)


def test_file_size_limit_while_checkpointing_is_one_line_without_temp_files(tiny_models, tiny_pairs_file,
                                                                             tmp_path):
    out = tmp_path / "out"
    r = _train_with_file_size_limit(tiny_models["llama"], tiny_pairs_file, out, 64 * 1024)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("embrecipe: error: writing the checkpoint") and "File too large" in last, r.stderr
    assert "Traceback" not in r.stderr
    assert not (out / "checkpoint.tmp").exists() and _leftovers(out) == []


def test_file_size_limit_while_exporting_is_one_line_without_temp_files(tiny_models, tiny_pairs_file, tmp_path):
    out = tmp_path / "out"
    r = _train_with_file_size_limit(tiny_models["llama"], tiny_pairs_file, out, 64 * 1024,
                                    "--checkpoint-every", "0")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"embrecipe: error: export to {out} failed") and "Traceback" not in r.stderr, r.stderr
    assert _leftovers(out) == [] and not (out / "run.json").exists()


def test_write_failure_reads_library_errors():
    assert write_failure(OSError(27, "File too large")) == "File too large"
    assert write_failure(RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/0")) is not None
    assert write_failure(Exception("Error while serializing: IoError(File too large (os error 27))")) is not None
    assert write_failure(ValueError("shapes do not match")) is None


@pytest.mark.parametrize("kind", ["text", "directory"])
def test_a_store_that_cannot_be_opened_is_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "runs.sqlite"
    if kind == "text":
        path.write_text("this is not a database\n" * 100)
    else:
        path.mkdir()
    with pytest.raises(InputError, match=str(path)) as err:
        RunStore(path)
    assert "\n" not in str(err.value)
    if kind == "text":
        assert str(err.value) == f"store {path}: cannot open it as a run store (file is not a database)"
