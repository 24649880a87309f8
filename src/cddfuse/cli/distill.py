"""``cddfuse distill``: train a CDDFuse-lite student from an exact CDDFuse teacher."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..options import TASKS

HELP = "distill a fast CDDFuse-lite model from CDDFuse (teacher outputs cached, resumable, torchrun)"

DESCRIPTION = """\
Train CDDFuse-lite, a small student network (about 100x fewer operations), to reproduce an exact
CDDFuse teacher: by default the bundled weights of the task, or --teacher PATH (any weights
`cddfuse fuse --weights` accepts, e.g. the authors' CDDFuse_IVF.pth). The teacher fuses every
training pair once, whole; its outputs are cached on disk (--cache-dir; keyed by the teacher's and
the images' bytes, written atomically, resumable), so each step costs only the student. The loss is
L1 + gradient + SSIM towards the teacher plus CDDFuse's own fusion loss (see configs/distill_*.yaml).

The recipe is a YAML file; every setting can be overridden with --set KEY=VALUE or the flags below.
The run directory gets config.yaml, state.json, checkpoints/last.pt (every N steps, at the end, on
--max-time and on SIGTERM / Ctrl-C), TensorBoard logs in tb/, validation.jsonl, best.safetensors
(best agreement with the teacher on the held-out pairs) and final.safetensors, both usable by
`cddfuse fuse --method lite --weights`. Several processes: launch with torchrun."""

EPILOG = """\
examples:
  cddfuse distill --a pairs/ir --b pairs/vi --val-a held/ir --val-b held/vi --task ivf --name my_lite
  cddfuse distill --config configs/distill_ivf.yaml --run-dir runs/distill_ivf --max-time 30m
  cddfuse distill --resume runs/distill_ivf
  cddfuse distill --a ct --b mri --task mif --teacher CDDFuse_MIF.pth --cache-only

exit codes: 0 finished or stopped cleanly at a checkpoint (--max-time, SIGTERM; see state.json),
1 a failure (bad data, unreadable weights or checkpoint), 2 usage error (unknown key, bad value)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="YAML", help="recipe (default: the built-in defaults, without data)")
    g.add_argument("--name", help="run name: the run directory is runs/NAME (default: config name or 'lite')")
    g.add_argument("--run-dir", metavar="DIR", help="run directory (instead of runs/NAME)")
    g.add_argument("--resume", metavar="RUN", help="continue the run in RUN (a run directory or its last.pt)")
    g.add_argument("--max-time", metavar="DURATION",
                   help="wall-clock budget (3600, 90m, 8h): stop with a checkpoint before it runs out")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting (repeatable), e.g. --set optim.lr=1e-3 --set model.width=24")
    g.add_argument("--cache-only", action="store_true",
                   help="only compute the teacher's outputs (the cache) and exit")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    g = p.add_argument_group("shortcuts for common settings")
    g.add_argument("--a", metavar="DIR", help="data.a: folder of first sources (infrared / CT / PET / SPECT)")
    g.add_argument("--b", metavar="DIR", help="data.b: folder of second sources (visible / MRI)")
    g.add_argument("--val-a", metavar="DIR", help="val.a: held-out first sources")
    g.add_argument("--val-b", metavar="DIR", help="val.b: held-out second sources")
    g.add_argument("--task", choices=TASKS, help="task (picks the bundled teacher; written into the weights)")
    g.add_argument("--teacher", metavar="WEIGHTS", help="teacher weights (default: the bundled exact model)")
    g.add_argument("--cache-dir", metavar="DIR", help="data.cache_dir: where the teacher's outputs are kept")
    g.add_argument("--steps", type=int, help="train.steps")
    g.add_argument("--batch-size", type=int, help="train.batch_size (global)")
    g.add_argument("--lr", type=float, help="optim.lr")
    g.add_argument("--seed", type=int, help="seed")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="train.threads (torch threads on CPU)")
    g.add_argument("--bf16", action="store_true",
                   help="train.precision=bf16 (CUDA, or CPUs with AMX or AVX512-BF16)")
    g.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="checkpoint.every_steps")
    g.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    p.set_defaults(func=run)
    return p


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [
        ("data.a", args.a), ("data.b", args.b), ("val.a", args.val_a), ("val.b", args.val_b), ("task", args.task),
        ("teacher", args.teacher), ("data.cache_dir", args.cache_dir), ("train.steps", args.steps),
        ("train.batch_size", args.batch_size), ("optim.lr", args.lr), ("seed", args.seed), ("device", args.device),
        ("train.threads", args.threads), ("checkpoint.every_steps", args.checkpoint_every), ("name", args.name),
    ]
    out = [f"{k}={json.dumps(v)}" for k, v in pairs if v is not None]
    if args.bf16:
        out.append("train.precision=bf16")
    if args.no_progress:
        out.append("log.progress=false")
    if args.no_tensorboard:
        out.append("log.tensorboard=false")
    return out


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    from ..errors import UsageError
    from ..train import distill_config as DC

    overrides = list(args.overrides) + _shortcut_overrides(args)
    max_time = DC.parse_duration(args.max_time) if args.max_time else None
    ck = None
    if args.resume:
        from ..train.distill import load_distill_checkpoint

        if args.config:
            raise UsageError("--config cannot be combined with --resume: the run's own config is used "
                             "(change runtime settings with --set)")
        ck = load_distill_checkpoint(args.resume)
        ck_path = Path(ck["_path"])
        run_dir = Path(args.run_dir) if args.run_dir else ck_path.parent.parent
        saved = DC.merge(DC.default_config(), ck["config"], str(ck_path))
        cfg = DC.merge(DC.default_config(), ck["config"], str(ck_path))
        DC.apply_overrides(cfg, overrides)
        bad = [k for k in DC.changed_keys(saved, cfg)
               if not any(k == w or (w.endswith(".") and k.startswith(w)) for w in DC.RESUME_OVERRIDABLE)]
        if bad:
            raise UsageError(f"cannot change {', '.join(bad)} when resuming (it would change the computation); "
                             f"changeable: {', '.join(DC.RESUME_OVERRIDABLE)}")
        if cfg["train"]["steps"] < int(ck["step"]):
            raise UsageError(f"train.steps={cfg['train']['steps']} is below the steps already done ({ck['step']})")
        DC.validate(cfg)
    else:
        cfg = DC.load_config(args.config)
        DC.apply_overrides(cfg, overrides)
        DC.validate(cfg)
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            run_dir = Path("runs") / (cfg["name"] or (Path(args.config).stem if args.config else "lite"))
        if (run_dir / "checkpoints" / "last.pt").exists() and not (args.print_config or args.cache_only):
            raise UsageError(f"{run_dir} already holds a distillation run; continue it with "
                             f"`cddfuse distill --resume {run_dir}` or choose another --name / --run-dir")
    if args.print_config:
        sys.stdout.write(DC.dump_config(cfg))
        return 0
    if args.cache_only:
        from ..train.distill import fill_teacher_cache

        cache_dir = Path(cfg["data"]["cache_dir"] or run_dir.parent / "teacher_cache")
        _, _, desc = fill_teacher_cache(cfg, cache_dir, lambda m: print(m, file=sys.stderr, flush=True))
        print(f"teacher cache ready: {desc['pairs']} training and {desc['val_pairs']} validation pairs in "
              f"{desc['cache']}", file=sys.stderr)
        return 0
    from ..train.distill import distill

    distill(cfg, run_dir, resume=ck, max_time=max_time, start_time=start)
    return 0
