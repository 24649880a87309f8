"""Time one Phase-I training step of CDDFuse (the paper's sizes; batch 8 of 128x128 by default).

A Phase-I step: both sources through the encoder, each reconstructed by the decoder (residual =
the source), loss = 5 SSIMloss + MSE per source + 5 L1(SpatialGradient) of the visible one
+ 2 L_decomp, backward, gradient clipping (0.01) per part and the Adam steps of encoder and decoder.

Variants (same math; they differ in float rounding only):

* ``authors``: the authors' train.py step -- encoder called on the visible and the infrared batch
  separately, decoder twice, the whole batch at once, kornia losses as in their code -- on the
  authors' layer-by-layer network (:mod:`cddfuse.models.reference`: their ``to_3d``/``to_4d``
  LayerNorm, rearranges...) when that module is importable, else on :class:`cddfuse.models.CDDFuse`;
* ``ours``: :meth:`cddfuse.train.trainer.Trainer.train_step` as ``cddfuse train`` runs it: both
  sources as one batch, the batch in micro-batches (``--micro-batch``, default ``auto``: as many pairs
  as fit in min(8 GB, RAM/3), 2 on a 24 GB machine; the decomposition loss at the batch-mean
  correlations from a gradient-free encoder pass), glibc malloc tuned to reuse memory; optionally
  as ``--procs`` data-parallel gloo processes (what ``torchrun`` launches).

``both`` runs each variant in its own process (the authors' whole-batch step needs ~25 GB and may
be killed for memory). Report the best of several steps: other processes on the machine inflate the
others.

Usage::

    python benchmarks/bench_train_step.py --variant both --threads 2 --steps 2
    python benchmarks/bench_train_step.py --variant ours --procs 2 --threads 1 --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from cddfuse.models import CDDFuse, CDDFuseConfig
from cddfuse.train import losses as L

import _harness as H


def _authors_model(seed: int):
    torch.manual_seed(seed)
    m = CDDFuse(CDDFuseConfig())
    try:
        from cddfuse.models.reference import reference_from

        return reference_from(m), "cddfuse.models.reference (the authors' layer-by-layer network)"
    except Exception:  # noqa: BLE001 - the reference module is optional here
        return m, "cddfuse.models.CDDFuse (reference module not importable)"


def authors_step(model, opts, vis, ir):
    """The authors' Phase-I step (train.py), with their call structure."""
    import kornia

    for o in opts:
        o.zero_grad()
    enc, dec = model.encoder, model.decoder
    v_b, v_d, _ = enc(vis)
    i_b, i_d, _ = enc(ir)
    vis_hat = dec(v_b, v_d, vis)
    ir_hat = dec(i_b, i_d, ir)
    vis_hat = vis_hat[0] if isinstance(vis_hat, tuple) else vis_hat
    ir_hat = ir_hat[0] if isinstance(ir_hat, tuple) else ir_hat
    ssim = kornia.losses.SSIMLoss(11, reduction="mean")
    cc_b, cc_d = L.cc(v_b, i_b), L.cc(v_d, i_d)
    mse_v = 5 * ssim(vis, vis_hat) + F.mse_loss(vis, vis_hat)
    mse_i = 5 * ssim(ir, ir_hat) + F.mse_loss(ir, ir_hat)
    grad = F.l1_loss(kornia.filters.SpatialGradient()(vis), kornia.filters.SpatialGradient()(vis_hat))
    decomp = cc_d ** 2 / (1.01 + cc_b)
    loss = mse_v + mse_i + 2 * decomp + 5 * grad
    loss.backward()
    torch.nn.utils.clip_grad_norm_(enc.parameters(), 0.01)
    torch.nn.utils.clip_grad_norm_(dec.parameters(), 0.01)
    opts[0].step()
    opts[1].step()
    return float(loss.detach())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=("both", "ours", "authors"), default="both")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--procs", type=int, default=1,
                    help="ours: data-parallel processes (gloo), each with batch/procs pairs and --threads threads")
    ap.add_argument("--micro-batch", default="auto", help="ours: pairs per forward/backward chunk (auto: 1 on CPU)")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="ours: leave glibc malloc as it is")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true",
                    help="ours: bfloat16 autocast as `cddfuse train --bf16` (CPUs with AMX/AVX512-BF16, or CUDA)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.bf16:
        os.environ["CDDFUSE_BENCH_BF16"] = "1"
    g = torch.Generator().manual_seed(0)
    vis = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(dev)
    ir = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(dev)

    _bare_trainer.micro_batch = args.micro_batch
    results = {}
    if args.variant == "both":  # each variant in its own process: the authors' step may run out of memory
        for variant in ("authors", "ours"):
            results[variant] = _run_in_subprocess(variant, argv if argv is not None else sys.argv[1:])
        variants = ()
    else:
        variants = (args.variant,)
    for variant in variants:
        if variant == "authors":
            model, what = _authors_model(0)
            model.to(dev).train()
            opts = [torch.optim.Adam(model.encoder.parameters(), lr=1e-4),
                    torch.optim.Adam(model.decoder.parameters(), lr=1e-4)]

            def run(model=model, opts=opts):
                authors_step(model, opts, vis, ir)
        elif args.procs > 1:
            times, cpu = _time_data_parallel(args, vis, ir)
            what = (f"cddfuse.train.Trainer.train_step, {args.procs} gloo processes "
                    f"x {args.batch // args.procs} pairs, micro-batch {args.micro_batch}")
            _report(results, variant, what, times, cpu)
            continue
        else:
            from cddfuse.train import config as C

            if not args.no_malloc_tuning:  # as `cddfuse train` does on CPU (after the authors' variant)
                from cddfuse.train.trainer import tune_glibc_malloc

                tune_glibc_malloc()
            what = f"cddfuse.train.Trainer.train_step, micro-batch {args.micro_batch}"
            cfg = C.default_config()
            trainer = _bare_trainer(cfg, dev, args.size)
            a, b = ir, vis

            def run(trainer=trainer, a=a, b=b):
                trainer.train_step(a, b, phase=1)
        timing = H.time_calls(run, args.steps, warmup=1,
                              sync=torch.cuda.synchronize if dev.type == "cuda" else None)
        _report(results, variant, what, timing.walls, timing.cpus)
    m = H.machine()
    info = {
        "machine": H.cpu_name(), "memory_gb": m["memory_gib"], "cpus": m["cores"], "threads": m["threads"],
        "torch": m["torch"], "python": m["python"], "batch": args.batch, "size": args.size, "device": str(dev),
        "date": m["date"], "loadavg_after": m["loadavg"], "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    print(json.dumps({k: v for k, v in info.items() if k != "results"}))
    return 0


def _run_in_subprocess(variant, argv):
    import subprocess
    import tempfile

    rest, skip = [], False
    for x in argv:  # drop --variant / --json and their values
        if skip:
            skip = False
            continue
        if x in ("--variant", "--json"):
            skip = True
            continue
        if x.startswith(("--variant=", "--json=")):
            continue
        rest.append(x)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        p = subprocess.run([sys.executable, __file__, "--variant", variant, "--json", out, *rest])
        if p.returncode != 0 or not os.path.exists(out):
            why = "killed by SIGKILL (out of memory?)" if p.returncode in (-9, 137) else f"exit code {p.returncode}"
            print(f"{variant:8s} FAILED: {why}", flush=True)
            return {"failed": why}
        with open(out) as f:
            return json.load(f)["results"][variant]


def _report(results, variant, what, times, cpu):
    if variant == "ours" and os.environ.get("CDDFUSE_BENCH_BF16") == "1":
        what += ", bf16 autocast"
    results[variant] = {"what": what, "seconds": times, "min_s": min(times), "median_s": statistics.median(times),
                        "cpu_seconds": cpu, "min_cpu_s": min(cpu)}
    print(f"{variant:8s} best {min(times):7.2f} s/step wall (median {statistics.median(times):.2f}), "
          f"{min(cpu):7.2f} s CPU (steps: " + ", ".join(f"{t:.2f}" for t in times) + f")  [{what}]", flush=True)


def _dp_worker(rank, args, vis, ir, port, queue):
    import torch.distributed as dist

    from cddfuse.train import config as C
    from cddfuse.train.distributed import DistContext

    torch.set_num_threads(args.threads or 1)
    _bare_trainer.micro_batch = args.micro_batch
    if not args.no_malloc_tuning:
        from cddfuse.train.trainer import tune_glibc_malloc

        tune_glibc_malloc()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.procs)
    t = _bare_trainer(C.default_config(), torch.device("cpu"), args.size)
    t.dist = DistContext(rank, args.procs, rank, torch.device("cpu"), "gloo")
    t.model.requires_grad_(True)
    k = args.batch // args.procs
    a, b = ir[rank * k:(rank + 1) * k].clone(), vis[rank * k:(rank + 1) * k].clone()
    t.train_step(a, b, phase=1)  # warm-up
    times, cpu = [], []
    for _ in range(args.steps):
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        t.train_step(a, b, phase=1)
        dist.barrier()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    queue.put((rank, times, cpu))
    dist.destroy_process_group()


def _time_data_parallel(args, vis, ir):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_dp_worker, args=(r, args, vis, ir, port, queue)) for r in range(args.procs)]
    for p in procs:
        p.start()
    got = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    times = [max(g[1][i] for g in got) for i in range(args.steps)]
    cpu = [sum(g[2][i] for g in got) for i in range(args.steps)]  # CPU seconds of all processes
    return times, cpu


def _bare_trainer(cfg, dev, size: int = 128):
    """The trainer's optimisation step (:class:`cddfuse.train.step.TrainStep`, what :meth:`Trainer.train_step`
    runs) without data: the network, one Adam per part, no schedules."""
    from cddfuse.train.distributed import DistContext
    from cddfuse.train.losses import LossWeights
    from cddfuse.train.step import TrainStep

    mb = getattr(_bare_trainer, "micro_batch", "auto")
    cfg["train"]["micro_batch"] = mb if mb == "auto" else int(mb)
    torch.manual_seed(0)
    model = CDDFuse(CDDFuseConfig()).to(dev).train()
    optimizers = {p: torch.optim.Adam(getattr(model, p).parameters(), lr=1e-4)
                  for p in ("encoder", "decoder", "base_fuse", "detail_fuse")}
    return TrainStep(cfg, model, optimizers, {}, DistContext(device=dev), LossWeights(**cfg["loss"]),
                     use_bf16=os.environ.get("CDDFUSE_BENCH_BF16") == "1",  # --bf16 (inherited by --procs workers)
                     sample_hw=(size, size))


if __name__ == "__main__":
    sys.exit(main())
