"""Split evaluation: embed_eval_texts (no mteb, e.g. on a GPU box) → evaluate_embeddings (mteb, here)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from embrecipe import evaluate as ev
from embrecipe.errors import InputError

LIMIT = 40


@pytest.fixture(scope="module")
def npz(tiny_models, tmp_path_factory):
    """Embeddings of the tiny llama, computed as on a GPU box: mteb unimportable and embrecipe run from a source
    checkout on PYTHONPATH (no package metadata for either)."""
    import importlib.metadata

    real_version = importlib.metadata.version

    def version(name):
        if name in ("embrecipe", "mteb"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "mteb", None)  # any `import mteb…` now raises ImportError
        mp.setattr(importlib.metadata, "version", version)
        return ev.embed_eval_texts(tiny_models["llama"], tmp_path_factory.mktemp("emb") / "e.npz", limit=LIMIT)


def _rewrite(src, dst, **changes):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta.update(changes.pop("meta", {}))
    arrays.update(changes, meta=np.array(json.dumps(meta)))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def test_evaluate_module_imports_without_mteb():
    code = ("import sys; sys.modules['mteb'] = None; import embrecipe.evaluate, embrecipe.cli.eval; "
            "assert not any(m.startswith('mteb') for m in sys.modules if sys.modules[m] is not None)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_precomputed_embeddings_give_evaluate_s_numbers(npz, tiny_models, tmp_path):
    with np.load(npz) as z:
        meta = json.loads(str(z["meta"]))
        assert z["query"].shape == z["pos"].shape and z["query"].shape[0] == LIMIT
        assert z["query"].dtype == np.float32
    assert meta["num_pairs"] == LIMIT and meta["limit"] == LIMIT and meta["split"] == "test"
    assert not npz.with_name(npz.name + ".tmp").exists()

    direct = ev.evaluate(tiny_models["llama"], limit=LIMIT)
    record = ev.evaluate_embeddings(npz, out=tmp_path, name="tiny-llama")
    assert record["heldout_loss"] == pytest.approx(direct["heldout_loss"], abs=1e-5)
    assert record["heldout_batch_size"] == direct["heldout_batch_size"]
    assert record["num_pairs"] == direct["num_pairs"] and record["max_seq_length"] == direct["max_seq_length"]
    assert set(record["tasks"]) == set(direct["tasks"]) == {"LocalDocRetrieval", "LocalDocRelatedness"}
    for task, res in direct["tasks"].items():
        assert record["tasks"][task]["main_score"] == pytest.approx(res["main_score"], abs=1e-5), task
        assert record["tasks"][task]["metric"] == res["metric"]
    assert record["embeddings"] == str(npz) and record["name"] == "tiny-llama"
    assert json.loads((tmp_path / "eval.json").read_text())["tasks"] == record["tasks"]
    # mteb's cache is filed under the given name, apart from other models'.
    assert (tmp_path / "mteb" / "results" / "local__tiny-llama").is_dir()
    assert "| tiny-llama |" in ev.format_table(record)


def test_mismatched_or_tampered_embeddings_are_input_errors(npz, tiny_pairs_file, tmp_path):
    with pytest.raises(InputError, match=r"e\.npz: its texts do not match"):
        ev.evaluate_embeddings(npz, limit=LIMIT + 1)
    with pytest.raises(InputError, match="do not match"):
        ev.evaluate_embeddings(npz, pairs=tiny_pairs_file)
    with pytest.raises(InputError, match=r"other\.npz: its texts do not match"):
        ev.evaluate_embeddings(_rewrite(npz, tmp_path / "other.npz", meta={"limit": LIMIT - 2}))
    with np.load(npz) as z:
        short = z["query"][:-1]
    with pytest.raises(InputError, match=r"short\.npz: arrays of shape"):
        ev.evaluate_embeddings(_rewrite(npz, tmp_path / "short.npz", query=short))
    with pytest.raises(InputError, match=r"missing\.npz: not found"):
        ev.evaluate_embeddings(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not an npz")
    with pytest.raises(InputError, match=r"junk\.npz: not a readable"):
        ev.evaluate_embeddings(tmp_path / "junk.npz")


def test_text_without_a_stored_vector_is_a_clear_error(npz, tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\t2\ne\tf\t3\n")
    with pytest.raises(InputError, match=r"e\.npz: task LocalSTS-sts needs \d+ text\(s\) that were not embedded"):
        ev.evaluate_embeddings(npz, tasks=f"sts:{sts}")


def test_eval_cli_with_embeddings(npz, tiny_models, tmp_path, capsys):
    from embrecipe.cli import main

    assert main(["eval", "--embeddings", str(tmp_path / "nope.npz")]) == 2
    err = capsys.readouterr().err
    assert "nope.npz: not found" in err and err.count("\n") == 1
    assert main(["eval"]) == 2
    assert "--model" in capsys.readouterr().err
    saved = tmp_path / "cli.npz"
    assert main(["eval", "--model", tiny_models["llama"], "--limit", "24", "--save-embeddings", str(saved)]) == 0
    assert "--embeddings" in capsys.readouterr().out and saved.is_file()
    out = tmp_path / "out"
    assert main(["eval", "--embeddings", str(saved), "--tasks", "LocalDocRetrieval", "--out", str(out),
                 "--name", "cli-model"]) == 0
    assert "| cli-model |" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["num_pairs"] == 24
