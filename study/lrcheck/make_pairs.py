"""A 2,051-pair training subset of the packaged testbed pairs (every 14th line of the train split), so that the
end-to-end check's runs are not dominated by tokenizing 28,712 pairs on a shared 2-core CPU. Deterministic."""
import gzip
from pathlib import Path

root = Path(__file__).resolve().parents[2]
lines = gzip.open(root / "src/embrecipe/resources/pairs/train.jsonl.gz", "rt").read().splitlines()
out = Path(__file__).with_name("train-2k.jsonl.gz")
with gzip.GzipFile(out, "wb", mtime=0) as f:
    f.write(("\n".join(lines[::14]) + "\n").encode())
print(f"{out}: {len(lines[::14])} of {len(lines)} pairs")
