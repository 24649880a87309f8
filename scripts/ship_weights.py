"""Copy a trained model into the package as bundled weights (src/cddfuse/weights/cddfuse_<task>.safetensors).

    .venv/bin/python scripts/ship_weights.py runs/bundled_ivf/final.safetensors ivf ["data in words"]

Checks the task and the size limit (6 MB), fills metadata an older trainer did not write
("recipe", "hardware": this machine, which must be the one that trained), and writes atomically.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from cddfuse.models.pretrained import PRETRAINED, WEIGHTS_DIR
from cddfuse.models.weights import load_weights, save_weights
from cddfuse.train.trainer import hardware_description


def main() -> int:
    src, task = Path(sys.argv[1]), sys.argv[2]
    model, info = load_weights(src)
    if info.task != task:
        raise SystemExit(f"{src} says task {info.task!r}, not {task!r}")
    prov = dict(info.provenance)
    prov.setdefault("recipe", prov.get("training_config", {}).get("name", ""))
    prov.setdefault("hardware", hardware_description(torch.device(prov.get("device", "cpu"))))
    if len(sys.argv) > 3:
        prov["data_description"] = sys.argv[3]
    prov["shipped_from"] = src.name if src.parent.name in ("", ".") else f"{src.parent.name}/{src.name}"
    dest = WEIGHTS_DIR / PRETRAINED[task].filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, dest, task=task, residual=info.residual, normalize=info.normalize, provenance=prov)
    size = dest.stat().st_size
    if size >= 6 * 2 ** 20:
        dest.unlink()
        raise SystemExit(f"{dest.name} would be {size / 2 ** 20:.1f} MiB, over the 6 MB limit")
    again, info2 = load_weights(dest)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    print(f"wrote {dest} ({size / 2 ** 20:.2f} MiB; task {task}, residual {info.residual}, "
          f"{prov.get('steps')} steps, {prov.get('train_time_s')} s on {prov['hardware']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
