"""``cddfuse train``: train CDDFuse (two phases) from a YAML recipe, resumable, on one or many processes."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..options import RESIDUAL_MODES, TASKS
from ._args import finite_float, whole

HELP = "train CDDFuse on your own image pairs (YAML recipe, checkpoints, --resume, torchrun)"

DESCRIPTION = """\
Train CDDFuse: Phase I (encoder + decoder learn to reconstruct each source), then Phase II
(fusion). The recipe is a YAML file (see configs/); every setting can be overridden with
--set KEY=VALUE (YAML value, e.g. --set optim.lr=2e-4) or the flags below. The run directory
gets config.yaml, state.json, checkpoints/last.pt (every N steps, at the phase boundary, at the
end, on --max-time and on SIGTERM / Ctrl-C), TensorBoard logs in tb/ and, at the end,
final.safetensors, usable by `cddfuse fuse --weights`.

Several processes (GPUs or machines): launch with torchrun, e.g.
  torchrun --nproc_per_node 4 -m cddfuse.cli.main train --config ... --run-dir ...
The batch size is the global batch, split evenly over the processes."""

EPILOG = """\
examples:
  cddfuse prepare MSRS/train/ir MSRS/train/vi -o data/msrs.h5
  cddfuse train --config configs/paper_msrs.yaml --data data/msrs.h5 --name msrs
  cddfuse train --resume runs/msrs --max-time 8h
  cddfuse train --config configs/small_cpu.yaml --a pairs/ir --b pairs/vi --set phase2.epochs=3
  cddfuse train --config configs/medical.yaml --data data/ct_mri.h5 --residual sum --name ct

exit codes: 0 finished or stopped cleanly at a checkpoint (--max-time, SIGTERM; see state.json),
1 a failure (bad data, unreadable checkpoint), 2 usage error (unknown config key, bad value)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="YAML", help="recipe (default: the paper's, without data)")
    g.add_argument("--name", help="run name: the run directory is runs/NAME (default: config name or file stem)")
    g.add_argument("--run-dir", metavar="DIR", help="run directory (instead of runs/NAME)")
    g.add_argument("--resume", nargs="?", const=True, metavar="RUN",
                   help="continue the run in RUN (a run directory or a checkpoint .pt); without RUN: "
                        "the one given by --run-dir / --name")
    g.add_argument("--max-time", metavar="DURATION",
                   help="wall-clock budget (3600, 90m, 8h, 1d) from the command's start: stop with a checkpoint "
                        "before it runs out (estimated from the steps and checkpoints so far: the first step of "
                        "a session is not known in advance)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config setting (repeatable), e.g. --set optim.lr=2e-4 --set data.workers=4")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    g = p.add_argument_group("shortcuts for common settings")
    g.add_argument("--data", metavar="CACHE", help="data.cache: a file from `cddfuse prepare`")
    g.add_argument("--a", metavar="DIR", help="data.a: folder of first sources (infrared / CT / PET / SPECT)")
    g.add_argument("--b", metavar="DIR", help="data.b: folder of second sources (visible / MRI)")
    g.add_argument("--val-a", metavar="DIR", help="val.a: held-out first sources")
    g.add_argument("--val-b", metavar="DIR", help="val.b: held-out second sources")
    g.add_argument("--task", choices=TASKS, help="task written into the weights")
    g.add_argument("--residual", choices=RESIDUAL_MODES, help="phase2.residual")
    g.add_argument("--epochs", nargs=2, type=whole(0, 1_000_000), metavar=("PHASE1", "PHASE2"),
                   help="phase1.epochs phase2.epochs")
    g.add_argument("--batch-size", type=whole(1, 1 << 16), help="train.batch_size (global)")
    g.add_argument("--lr", type=finite_float(0, low_open=True), help="optim.lr")
    g.add_argument("--seed", type=whole(0, 2**32 - 1), help="seed")
    g.add_argument("--workers", type=whole(0, 256), help="data.workers (loader processes per rank)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--bf16", action="store_true",
                   help="train.precision=bf16: bfloat16 autocast with float32 weights and loss (CUDA, or CPUs "
                        "with AMX or AVX512-BF16)")
    g.add_argument("--init", metavar="WEIGHTS",
                   help="model.init: start from these weights (a file, or authors-ivf / authors-mif)")
    g.add_argument("--checkpoint-every", type=whole(1, 10**12), metavar="STEPS", help="checkpoint.every_steps")
    g.add_argument("--no-progress", action="store_true",
                   help="log lines instead of a progress bar (always so when stderr is not a terminal)")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    p.set_defaults(func=run)
    return p


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The explicit flags as ``key=value`` overrides (applied after --set's)."""
    import json

    pairs = [
        ("data.cache", args.data), ("data.a", args.a), ("data.b", args.b), ("val.a", args.val_a),
        ("val.b", args.val_b), ("task", args.task), ("phase2.residual", args.residual),
        ("train.batch_size", args.batch_size), ("optim.lr", args.lr), ("seed", args.seed),
        ("data.workers", args.workers), ("device", args.device), ("model.init", args.init),
        ("checkpoint.every_steps", args.checkpoint_every), ("name", args.name),
    ]
    out = [f"{k}={json.dumps(v)}" for k, v in pairs if v is not None]
    if args.epochs:
        out += [f"phase1.epochs={args.epochs[0]}", f"phase2.epochs={args.epochs[1]}"]
    if args.bf16:
        out.append("train.precision=bf16")
    if args.no_progress:
        out.append("log.progress=false")
    if args.no_tensorboard:
        out.append("log.tensorboard=false")
    return out


def run(args: argparse.Namespace) -> int:
    start = getattr(args, "started", None) or time.monotonic()  # --max-time counts from the command's start
    from ..errors import UsageError
    from ..train import config as C

    overrides = list(args.overrides) + _shortcut_overrides(args)
    max_time = C.parse_duration(args.max_time) if args.max_time else None

    if args.resume:
        from ..train.trainer import load_checkpoint

        if args.resume is True:
            if not (args.run_dir or args.name):
                raise UsageError("--resume needs the run to continue: --resume RUN_DIR (or --run-dir / --name)")
            target = Path(args.run_dir) if args.run_dir else Path("runs") / args.name
        else:
            target = Path(args.resume)
        if args.config:
            raise UsageError("--config cannot be combined with --resume: the run's own config is used "
                             "(change runtime settings with --set)")
        ck = load_checkpoint(target)
        ck_path = Path(ck["_path"])
        run_dir = Path(args.run_dir) if args.run_dir else ck_path.parent.parent
        cfg = C.merge(C.default_config(), ck["config"], where=str(ck_path))
        saved = C.merge(C.default_config(), ck["config"], where=str(ck_path))
        C.apply_overrides(cfg, overrides)
        bad = [k for k in C.changed_keys(saved, cfg)
               if not any(k == w or (w.endswith(".") and k.startswith(w)) for w in C.RESUME_OVERRIDABLE)]
        if bad:
            raise UsageError(
                f"cannot change {', '.join(bad)} when resuming (it would change the computation); "
                f"changeable: {', '.join(C.RESUME_OVERRIDABLE)}"
            )
        if cfg["phase2"]["epochs"] < saved["phase2"]["epochs"]:
            raise UsageError("phase2.epochs can only grow when resuming")
        C.validate(cfg)
    else:
        cfg = C.load_config(args.config)
        C.apply_overrides(cfg, overrides)
        C.validate(cfg)
        ck = None
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            name = cfg["name"] or (Path(args.config).stem if args.config else "cddfuse")
            run_dir = Path("runs") / name
        last = run_dir / "checkpoints" / "last.pt"
        if last.exists() and not args.print_config:
            raise UsageError(
                f"{run_dir} already holds a training run; continue it with `cddfuse train --resume {run_dir}` "
                "or choose another --name / --run-dir"
            )
    if args.print_config:
        sys.stdout.write(C.dump_config(cfg))
        return 0

    _check_run_outputs(run_dir, cfg, args.config)
    from ..train.trainer import train

    train(cfg, run_dir, resume=ck, max_time=max_time, start_time=start)
    return 0


def _check_run_outputs(run_dir: Path, cfg: dict[str, Any], config: str | None) -> None:
    """The files a run writes (config.yaml, state.json, checkpoints, final.safetensors) may not be its
    sources: the recipe, the initial weights, the data cache or a file of the data folders."""
    from .._fileutil import check_output

    sources = [(label, path) for label, path in (("--config", config), ("model.init", cfg["model"].get("init")),
                                                 ("data.cache", cfg["data"].get("cache"))) if path]
    folders = [f for f in (cfg["data"].get("a"), cfg["data"].get("b"), cfg["val"].get("a"), cfg["val"].get("b"))
               if f]
    for name in ("config.yaml", "state.json", "final.safetensors", "checkpoints/last.pt"):
        check_output(run_dir / name, sources=sources, source_folders=folders, flag="the run's")
