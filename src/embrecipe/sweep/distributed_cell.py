"""One sweep cell under torchrun (``python -m torch.distributed.run ... -m embrecipe.sweep.distributed_cell CFG REC``).

Every rank reads the same ``{"train_fn": "module:function", "config": {...}}`` and trains (the trainer joins
the process group from torchrun's environment and shards each global batch); rank 0 writes the record to REC.
The sweep's pool starts this for cells with ``gpu: {gpus_per_cell: k}``, k > 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from embrecipe.jsonio import atomic_write_json
    from embrecipe.sweep.executors import call_train, resolve_train_fn

    cfg_path, rec_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(cfg_path).read_text())
    record = call_train(resolve_train_fn(spec.get("train_fn")), spec["config"])
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(Path(rec_path), record)
    return 0 if record.get("status", "completed") != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
