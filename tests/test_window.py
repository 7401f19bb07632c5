"""The GPU window of study v2, rehearsed on CPU (issue 19): study/v2/window.sh → window.py, both calls of a window.

What a CPU can show, end to end: the carried wheels install offline (``pip install --no-index --no-deps
--target``) and import; the study resumes from a "committed" store; a deadline cuts a window short and it still
returns a consistent store in $OUT with no claim left running; the next window finishes the rest and trains no
finished cell twice — with the plain design and with the adaptive one (its decision lines and trace come back
too); the plain design's per-(model, variant) LR search and extra seeds give the keys they should;
and the same through the real trainer on a tiny decoder (the fast-path smoke with packing, the corpus carried as
xz). What only a GPU shows (CUDA, compile, the real ladder, throughput) is left to the window itself.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import lzma
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "study" / "v2"))

import build_carry  # noqa: E402
import window  # noqa: E402


def make_wheel(dest: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal valid pure-python wheel (what pip installs from a carried folder), written by hand: building
    one with setuptools would need a build step that CI does not have offline."""
    mod = name.replace("-", "_")
    files = {f"{mod}/__init__.py": f"VERSION = {version!r}\n".encode(),
             f"{mod}-{version}.dist-info/METADATA": ("Metadata-Version: 2.1\n"
                                                     f"Name: {name}\nVersion: {version}\n"
                                                     + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
             f"{mod}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                 b"Tag: py3-none-any\n"}
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += f"{mod}-{version}.dist-info/RECORD,,\n"
    files[f"{mod}-{version}.dist-info/RECORD"] = record.encode()
    out = dest / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


def test_missing_requirements_checks_carried_and_image(tmp_path):
    ok = make_wheel(tmp_path, "carried-a", "1.0", ["numpy>=1.17", "carried-b<2", "colorama; sys_platform == 'win32'"])
    b = make_wheel(tmp_path, "carried-b", "1.5", [])
    assert build_carry.missing_requirements([ok, b]) == []
    lonely = make_wheel(tmp_path / "", "carried-c", "1.0", ["not-on-the-image-xyz", "transformers>=5.20"])
    problems = build_carry.missing_requirements([lonely])
    assert any("not-on-the-image-xyz" in p and "neither carried" in p for p in problems)
    assert any("transformers 5.17.0" in p for p in problems)  # the image's version, too old for the pin
    assert build_carry.missing_requirements([lonely], image_versions={"transformers": "5.24.0"})[1:] == []


def test_card_measured_and_fast_path_overrides(tmp_path):
    results = tmp_path / "results.json"
    assert not window.card_measured(results, "NVIDIA H100 80GB HBM3")
    results.write_text(json.dumps({"runs": [{"device": "AMD EPYC", "smoke": False},
                                            {"kind": "gpu", "device": "NVIDIA H200 (GPU)", "smoke": False,
                                             "training": [{"model": "smollm2-L30"}]}]}))
    assert window.card_measured(results, "NVIDIA H200")
    assert not window.card_measured(results, "NVIDIA H100 80GB HBM3")
    ok, bad = {"ok": True}, {"ok": False, "why": "boom"}
    assert window.fast_path_overrides({"packing": bad}, use_compile=True) == {"packing": "off"}
    assert window.fast_path_overrides({"packing": {"ok": False, "tried": False}}, use_compile=False) == {}
    assert window.fast_path_overrides({}, use_compile=True) == {}  # no smoke: the trainer's defaults
    assert window.fast_path_overrides({"packing": ok, "compile": ok, "cudagraphs": bad}, use_compile=False) \
        == {"packing": "on"}
    assert window.fast_path_overrides({"packing": ok, "compile": ok, "cudagraphs": bad}, use_compile=True) \
        == {"packing": "on", "compile": "default"}


def test_unxz_joins_split_parts_and_refuses_a_cut_one(tmp_path):
    data = os.urandom(50_000) + b"text " * 20_000
    packed = lzma.compress(data)
    (tmp_path / "p1").write_bytes(packed[:30_000])
    (tmp_path / "p2").write_bytes(packed[30_000:])
    window.unxz([tmp_path / "p1", tmp_path / "p2"], tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    with pytest.raises(SystemExit, match="ends early"):
        window.unxz([tmp_path / "p1"], tmp_path / "cut")
    assert not (tmp_path / "cut").exists()  # nothing half-written under the final name


SYNTHETIC_SPEC = """
name: rehearsal
design: plain
trainer: synthetic
models:
  - {name: toy-h128-l2, path: toy-h128-l2}
  - {name: toy-h256-l4, path: toy-h256-l4}
methods: {full: {}, lora: {rank: [8]}}
budgets: [1.0e+11, 3.0e+11, 1.0e+12, 3.0e+12]
min_steps: 20
allow_repeat: true
tokens_per_pair: 60
dataset_pairs: 100000
train: {batch_size: 8, seed: 0, sleep: SLEEP}
lr_search: {factors: [0.3162, 1, 3.162]}
seeds: {budget: 1.0e+12, extra: [1], cells: [[toy-h128-l2, full]]}
"""


def window_call(tmp_path: Path, part: str, seconds: float, assets: Path, spec: Path, store_from: Path, *extra: str,
                imports: str = "carried_a") -> tuple[subprocess.CompletedProcess, Path]:
    """One call of the device tool, rehearsed: a fresh, empty $OUT; the working tree is this repository."""
    out = tmp_path / f"out-{part}-{len(list(tmp_path.glob('out-*')))}"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SITE": str(tmp_path / "site"),
           "ASSETS": str(assets), "WORK": str(tmp_path / "work"), "IMPORTS": imports, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # window.sh sets it: the carried wheels, then this repository's src
    proc = subprocess.run(["bash", str(REPO / "study" / "v2" / "window.sh"), part, str(seconds), "--spec", str(spec),
                           "--home", str(tmp_path / "home"), "--store-from", str(store_from), "--workers", "2",
                           "--backup-every", "1", *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def statuses(store: Path) -> dict[str, tuple[str, float]]:
    with sqlite3.connect(store) as c:
        return {k: (s, u) for k, s, u in c.execute("SELECT key, status, updated_at FROM runs")}


def test_window_rehearsal_synthetic(tmp_path):
    """Two windows of the synthetic study: the first cut by its deadline, its store "committed", the second
    resumes it to the end; the wheels come from the carried folder only."""
    assets = tmp_path / "stage"
    (assets / "whl").mkdir(parents=True)
    make_wheel(assets / "whl", "carried-a", "1.0", ["numpy"])
    spec = tmp_path / "spec.yaml"
    spec.write_text(SYNTHETIC_SPEC.replace("SLEEP", "1.5"))
    committed = tmp_path / "repo" / "study.sqlite"  # the repository's study/v2/study.sqlite

    # window 1: 18 s of wall time for the whole call, 3 of them reserved; cells take 1.5 s each, 2 at a time
    # (23 cells: >= 17 s of study), so the deadline falls mid-study however fast the set-up is (with 1 s cells
    # an idle machine finished all 23 before it)
    proc, out = window_call(tmp_path, "all", 18, assets, spec, committed, "--reserve-s", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "carried_a" / "__init__.py").is_file()  # installed from the carried wheel
    info = json.loads((out / "window.json").read_text())
    assert info["part"] == "all" and info["parts"]["benchmark"] == {"skipped": "no GPU"}
    first = statuses(out / "study.sqlite")
    assert "running" not in {s for s, _ in first.values()}  # an interrupted cell is handed back
    done1 = {k: u for k, (s, u) in first.items() if s == "completed"}
    assert len(done1) < 23, first
    assert (out / "logs.tar.gz").is_file() and (out / "window.log").is_file()
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most 8 files

    # "commit" what came back, then a fresh machine (new work folder) resumes from the committed store
    committed.parent.mkdir(parents=True)
    shutil.copy2(out / "study.sqlite", committed)
    shutil.rmtree(tmp_path / "work")
    proc, out2 = window_call(tmp_path, "all", 120, assets, spec, committed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = statuses(out2 / "study.sqlite")
    assert all(s == "completed" for s, _ in second.values()) and len(second) == 23
    assert {k: u for k, (s, u) in second.items() if k in done1} == done1  # finished cells were not retrained
    info = json.loads((out2 / "window.json").read_text())
    rungs = info["parts"]["study"]["rungs"]
    assert sum(r["done_before"] for r in rungs) == len(done1)
    assert sum(r["completed"] for r in rungs) == 23 - len(done1)
    assert info["parts"]["study"]["counts"]["completed"] == 23
    assert info["study_before"]["counts"].get("running", 0) == 0

    # the study is complete: call 2 of the next window runs the held-out check (embrecipe check at the largest
    # budget, fitted without it) and returns its store and check.json
    shutil.copy2(out2 / "study.sqlite", committed)
    proc, out3 = window_call(tmp_path, "check", 120, assets, spec, committed, "--check-from",
                             str(tmp_path / "repo" / "check.sqlite"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = json.loads((out3 / "window.json").read_text())["parts"]["check"]
    assert check["returncode"] == 0 and check["budget"] == 3e12 and check["counts"]["completed"] >= 2, check
    assert "regret" in (out3 / "check" / "check.json").read_text()


def test_window_rehearsal_synthetic_adaptive(tmp_path):
    """The same two windows through the adaptive design (issue 19 req. 2): the first cut by its deadline, the
    second resumes from the committed store without retraining a finished cell, the design's decision lines
    come back in window.json and its trace (every window's decisions) beside the store in $OUT."""
    assets = tmp_path / "stage"
    (assets / "whl").mkdir(parents=True)
    make_wheel(assets / "whl", "carried-a", "1.0", ["numpy"])
    spec = tmp_path / "spec.yaml"
    spec.write_text(SYNTHETIC_SPEC.replace("SLEEP", "1").replace("design: plain", ADAPTIVE_KEYS))
    committed = tmp_path / "repo" / "study.sqlite"

    proc, out = window_call(tmp_path, "study", 14, assets, spec, committed, "--reserve-s", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = statuses(out / "study.sqlite")
    assert "running" not in {s for s, _ in first.values()}
    done1 = {k: u for k, (s, u) in first.items() if s == "completed"}
    info = json.loads((out / "window.json").read_text())
    study = info["parts"]["study"]
    assert info["design"] == "adaptive" and study["adaptive"]["stop"] is None and study["timed_out"], study
    assert len(done1) > 0 and study["adaptive"]["last"].startswith("adaptive step")
    assert any(ln.startswith("adaptive step 0 [seed]") for ln in study["decisions"]), study["decisions"]
    trace1 = json.loads((out / "study.sqlite.adaptive.json").read_text())
    assert trace1["target"] == 3e12 and trace1["steps"]
    assert len(list(out.iterdir())) <= 8

    committed.parent.mkdir(parents=True)
    shutil.copy2(out / "study.sqlite", committed)
    shutil.copy2(out / "study.sqlite.adaptive.json", window.trace_of(committed))
    shutil.rmtree(tmp_path / "work")
    proc, out2 = window_call(tmp_path, "study", 150, assets, spec, committed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = statuses(out2 / "study.sqlite")
    assert {k: u for k, (s, u) in second.items() if k in done1} == done1  # finished cells were not retrained
    info = json.loads((out2 / "window.json").read_text())
    study = info["parts"]["study"]
    assert study["adaptive"]["stop"], study  # the design finished: it says why it stopped
    assert study["adaptive"]["ran"] == sum(1 for s, _ in second.values() if s == "completed") - len(done1) \
        - study["adaptive"].get("extra_seeds", {}).get("completed", 0)
    assert any("STOP" in ln for ln in study["decisions"]), study["decisions"]
    trace2 = json.loads((out2 / "study.sqlite.adaptive.json").read_text())
    assert trace2["windows"] == 2 and trace2["steps"][: len(trace1["steps"])] == trace1["steps"]
    assert trace2["stop"] == study["adaptive"]["stop"]
    plain = window.plan_summary(window.load_spec(spec, str(tmp_path / "home")), tmp_path)
    assert study["adaptive"]["experiment_budget"] == plain["model_flops"]  # the plain grid's FLOPs cap it
    assert study["adaptive"]["fraction_of_plain"] == pytest.approx(study["adaptive"]["flops_spent"] / plain["model_flops"])
    assert sum(float(json.loads(r)["model_flops"] or 0) for r in records(out2 / "study.sqlite")) \
        <= plain["model_flops"] * (1 + 1e-9)


ADAPTIVE_KEYS = """design: adaptive
adaptive: {draws: 12}"""


def records(store: Path) -> list[str]:
    with sqlite3.connect(store) as c:
        return [r for (r,) in c.execute("SELECT record FROM runs WHERE status = 'completed'")]


def test_adaptive_settings_trace_merge_and_overrides(tmp_path):
    """The spec's adaptive settings and their study defaults, a bad key as a one-line error naming the spec,
    the trace of several windows, and the fast-path overrides merged into the config at call time only."""
    import pickle

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SYNTHETIC_SPEC.replace("SLEEP", "0").replace("design: plain", ADAPTIVE_KEYS))
    spec = window.load_spec(spec_path, str(tmp_path))
    got = window.adaptive_settings(spec, spec_path, workers=3)
    assert got.targets == (3e12,) and got.batch == 3 and got.draws == 12  # the held-out budget; --workers
    assert got.experiment_budget == window.plan_summary(spec, tmp_path)["model_flops"]
    spec["adaptive"] = {"experiment_budget": 5e12, "target": 1e12, "batch": 1}
    got = window.adaptive_settings(spec, spec_path, workers=3)
    assert (got.experiment_budget, got.targets, got.batch) == (5e12, (1e12,), 1)
    spec["adaptive"] = {"treshold": 0.01}
    with pytest.raises(SystemExit, match=r"spec.yaml: adaptive: .*treshold"):
        window.adaptive_settings(spec, spec_path, workers=1)

    one, two = {"steps": [{"index": 0}], "stop": None}, {"steps": [{"index": 0}, {"index": 1}], "stop": "done"}
    assert window.merged_trace(None, one) == one and window.merged_trace(one, None) == one
    merged = window.merged_trace(window.merged_trace(one, one), two)
    assert merged["windows"] == 3 and len(merged["steps"]) == 4 and merged["stop"] == "done"

    fn = pickle.loads(pickle.dumps(window.WithOverrides(dict, {"packing": "on"})))  # the pool pickles it
    config = {"lr": 1e-4}
    assert fn(config) == {"lr": 1e-4, "packing": "on"} and config == {"lr": 1e-4}


def test_plain_design_cells(tmp_path):
    """Per (model, variant): 3 LRs at its own lowest kept budget, then one cell per higher budget at the chosen
    LR, plus the extra seeds; keys equal to what `embrecipe sweep` gives the same per-pair grid."""
    from embrecipe.runs.store import RunStore
    from embrecipe.sweep.cells import data_stats
    from embrecipe.sweep.orchestration import run_sweep

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SYNTHETIC_SPEC.replace("SLEEP", "0"))
    spec = window.load_spec(spec_path, str(tmp_path))
    grid = window.study_grid(spec, tmp_path)
    stats = data_stats(grid)
    kept = window.kept_budgets(grid, stats)
    assert kept[("toy-h256-l4", "full")][0] == 3e11 and kept[("toy-h128-l2", "full")][0] == 1e11
    summary = window.plan_summary(spec, tmp_path)
    assert summary["cells"] == 23 and summary["seed_cells_without_a_chosen_lr"] == []
    assert [r["cells"] for r in summary["rungs"]] == [6, 8, 5, 4]  # what the rehearsal's window trains per rung
    with RunStore(tmp_path / "s.sqlite") as st:
        low = window.rung_cells(grid, stats, st, kept, 1e11, spec["seeds"], print)
        assert sorted({c.model for c in low}) == ["toy-h128-l2"] and len(low) == 6  # 2 variants x 3 LRs
        waiting = window.rung_cells(grid, stats, st, kept, 3e11, spec["seeds"], print)
        assert {c.model for c in waiting} == {"toy-h256-l4"}  # h128 waits for its search; h256 searches
        from embrecipe.sweep.executors import resolve_train_fn

        window.run_cells(st, grid, resolve_train_fn("synthetic"), low, 1, {}, print)
        mid = window.rung_cells(grid, stats, st, kept, 1e12, spec["seeds"], print)
    seeds = sorted(c.config["seed"] for c in mid if c.model == "toy-h128-l2" and c.variant == "full")
    assert seeds == [0, 1]
    # the same pair as a plain sweep grid: identical keys for its search and its chosen-LR cells
    pair = window.pair_grid(grid, "toy-h128-l2", "full", [1e11, 1e12])
    res = run_sweep(pair, store=tmp_path / "sweep.sqlite", train_fn="synthetic", progress=False, log=lambda m: None)
    ours = {c.key for c in low if c.variant == "full"} | {c.key for c in mid if c.variant == "full"
                                                          and c.model == "toy-h128-l2" and c.config["seed"] == 0}
    assert set(res.ran) == ours


@pytest.mark.slow
def test_window_rehearsal_tiny_real_model(tmp_path):
    """The real trainer on a tiny decoder through both calls of a window: the stage call installs the carried
    wheel and smokes the packing fast path; the study call unpacks the carried corpus (xz, checked against the
    manifest's sha256) and trains the study with the smoke's verdict in each cell's config, not in its key.
    (Resuming and the deadline are the synthetic rehearsal's: a real cell costs ~15 s of start-up here.)"""
    from embrecipe.testing import make_tiny_decoder, tiny_pairs

    model = make_tiny_decoder(tmp_path / "home" / "tiny", "llama")
    stage, study = tmp_path / "stage", tmp_path / "study"
    (stage / "whl").mkdir(parents=True)
    make_wheel(stage / "whl", "carried-a", "1.0", [])
    corpus = study / "corpus"
    corpus.mkdir(parents=True)
    rows = "".join(json.dumps(r) + "\n" for r in tiny_pairs(256))
    (corpus / "train.jsonl.xz").write_bytes(lzma.compress(rows.encode()))
    with gzip.open(corpus / "validation.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in tiny_pairs(64, seed=1))
    (study / "manifest.json").write_text(json.dumps(
        {"train_jsonl_sha256": hashlib.sha256(rows.encode()).hexdigest()}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: tiny
models: [{{name: tiny-llama, path: "{model}"}}]
methods: {{full: {{}}, lora: {{rank: [4]}}}}
budgets: [2.0e+8]
min_steps: 2
allow_repeat: true
train: {{data: "{{home}}/corpus/embrecipe-corpus-v1/train.jsonl",
         val_data: "{{home}}/corpus/embrecipe-corpus-v1/validation.jsonl.gz", val_size_cap: 32,
         batch_size: 8, max_seq_length: 16, seed: 0, progress: false, precision: fp32}}
""")
    committed = tmp_path / "repo" / "study.sqlite"
    proc, out = window_call(tmp_path, "stage", 150, stage, spec, committed, "--smoke-paths", "packing",
                            "--smoke-budget", "1e8", "--smoke-batch", "8", "--smoke-s", "120")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = json.loads((out / "window.json").read_text())["parts"]["smoke"]
    assert verdicts["packing"]["ok"], verdicts
    # --workers 1: the cells train in the design's own process (no pool of fresh interpreters to import torch)
    proc, out = window_call(tmp_path, "study", 240, study, spec, committed, "--workers", "1", imports="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads((out / "window.json").read_text())
    assert info["study_overrides"] == {"packing": "on"} and info["parts"]["corpus"]["sha256_ok"]
    assert info["parts"]["study"]["counts"]["completed"] == 2, info["parts"]["study"]
    with sqlite3.connect(out / "study.sqlite") as c:
        rows_ = [(json.loads(r[0]), json.loads(r[1])) for r in c.execute("SELECT config, record FROM runs")]
    for key_config, record in rows_:
        assert "packing" not in key_config  # the fast-path choice never enters a run key
        assert record["config"]["packing"] == "on"  # but the run used it
