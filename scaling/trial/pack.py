"""Many adapters, one base model: K LoRA trials trained at once on one frozen base.

``packing: {adapters_per_worker: K}``
-------------------------------------
A LoRA trial trains a small set of adapter weights but pushes every token through
the whole frozen base. A *pack* trains K trials in one process on ONE copy of
the base: each step concatenates the K trials' own batches along the batch dimension,
runs the base once (``x @ W^T`` for all K*B rows), and adds each trial's LoRA delta
``(x_k @ A_k^T) @ B_k^T * alpha_k / r_k`` to its own rows only (two batched matmuls over
the stacked adapters per projection). Each trial keeps everything that defines its
result: its peft initialisation under its seed, its data order, its AdamW, its warmup +
cosine schedule, its gradient clipping, its evaluations and its metrics dicts. Packing
is an optimisation, not a change of result: a packed trial reports the metrics that
a pack of one (``run_trial``) reports for the same config, to float rounding (bench/
packing_equivalence.py, 4 ragged configs: at most 9.5e-7 on CPU and 2.4e-6 on an H100,
on the per-example summed log-prob; the tests hold every metric, exact match and
accuracy included, to 1e-4). Trials leave the pack when they
finish, fail (a diverging learning rate fails that trial only) or are stopped, and new
ones may join at any step, so a pack can be fed continuously.

Where it pays: wherever one trial alone leaves the device idle, which is the rule for
LoRA on a GPU with a small or mid-size base. Measured with bench/packing.py on an NVIDIA
H100 80GB (torch 2.11, the demo's tiny base and task, D=1000, 2 epochs, eval 200+200;
bench/results/packing_h100*.txt), trials per hour at K = 4 / 8 / 16: 2.6 / 4.0 / 5.6x a
warm loop of single trials and 3.1 / 5.1 / 12.6x one trial per fresh process (best of 2
runs; a single run gave 3.0 / 2.7 / 6.0x and 3.5 / 6.4 / 12.6x); GPU memory 128 / 188 /
309 MB for the pack against 84 MB per single trial. There the step is bound by kernel
launches and host syncs, not arithmetic, so a pack keeps the base's launches fixed and
syncs the host twice per step for all K adapters (one cross-entropy and one batched
gradient norm). Published GPU figures: PLoRA (Yan et al., 2025, arXiv:2508.02932) up to
12.8x training throughput and 7.52x shorter makespan for a LoRA hyperparameter search;
LoRAFusion (Zhu et al., 2025, arXiv:2510.00206) up to 1.96x end-to-end over
Megatron-LM, 1.46x over mLoRA. On a CPU it pays little: one trial's batch (32 sequences
x ~8 tokens) already keeps a core's matmuls busy, so K trials cost K times the
arithmetic, and only per-call overhead is shared. On a 2-core AMD EPYC VM shared with
other jobs (1 thread per process), K = 4 / 8 / 16 gave 1.19 / 1.20 / 1.20x a warm loop
and 2.20 / 2.40 / 3.06x one trial per fresh process; peak RSS 560 / 692 / 1027 MB for the
pack against 468 MB for each single-trial process.

How a pack maps onto Ray Tune (what sweep/worker.py does)
--------------------------------------------------
(A) *one Ray trial = one pack*. The searcher asks a cell's Optuna study for K trials at
    once (TPE's constant_liar keeps K pending asks apart); the trainable calls
    ``run_packed(cfgs, reports=[...], should_stops=[...])`` on the worker's cached base;
    each report carries its member index, so the recorder writes K trial_ids and the
    searcher tells K Optuna trials, each its own COMPLETE / PRUNED / FAIL. Resources stay
    simple (a pack is an ordinary trial with the spec's cpus/gpus), failures stay per
    adapter (``run_packed`` returns the exception in that adapter's place), and a Ray
    retry re-runs a pack deterministically. With early stopping the pack carries 2K
    configs, K train at once, scaling/stopping.py stops members by the cell's rule and a
    queued config joins in the freed slot (``max_adapters``).
(B) *one Ray trial per adapter, a shared actor hosts the pack* (not built): keeps Tune's
    one trial = one config and uses ``Pack.add`` as Tune starts trials, but Tune has to
    stop trials it does not run, the actor's resources are invisible to Tune's scheduler,
    and the actor is a second failure domain. Worth it only for mixed packs on big GPUs.
Set K so that K x batch_size rows fill the device (on a GPU: until the step time starts
to grow with K; on a CPU: 4-8).

A solo trial is a pack of one (``run_trial``): one training loop, one evaluation, one
divergence rule. A pack of one costs what the old solo loop cost (3.2 s against 3.3 s,
bench/results/packing_cpu.txt). lora_dropout > 0 is allowed only there: a dropout mask
per adapter is random state a shared pass cannot reproduce (trial/layer.py applies
peft's dropout to the one adapter's input).

Read top to bottom:
  1. Pack: the base model and its wrappers, add, step, evaluate, leave, run, close
  2. run_packed: K configs as one pack
  3. run_trial: a pack of one
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from scaling.models import end_of_answer_ids
from scaling.trial.adapter import PackedTrial, _Adapter, _bind
from scaling.trial.base import (
    WorkerBase,
    attach_lora,
    autocast,
    base_key,
    cache_kwarg,
    get_base,
    n_targets,
    right_padded,
    save_lora,
    set_checkpointing,
    supports_checkpointing,
    trial_data,
    weights_fingerprint,
)
from scaling.trial.config import TrialConfig
from scaling.trial.evaluate import evaluate
from scaling.trial.layer import MultiLoRALinear, _Layout

__all__ = ["Pack", "PackedTrial", "run_packed", "run_trial"]

# -----------------------------------------------------------------------------
# 1. The pack


class Pack:
    """K LoRA trials on one frozen base model in this process, joined and left at will.

        with Pack(cache=worker_cache) as pack:
            h = pack.add(cfg, report=on_metrics)      # joins at the next step
            pack.run(fill=lambda p: ...)              # fill may add() more while it runs
        h.history, h.status, h.error

    The pack takes the base model out of the worker cache while it is open (its linear
    layers are wrapped) and puts it back, checked unchanged, on close. All configs must
    share the model, target_modules and lora_dropout = 0 (a dropout mask per adapter is
    random state a shared pass cannot reproduce); a solo pack (``solo=True``, what
    run_trial opens) takes one config, and that one may have dropout.
    """

    def __init__(self, *, cache: dict | None = None, threads: int | None = None,
                 device: str | None = None, solo: bool = False):  # fmt: skip
        self.cache = {} if cache is None else cache
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.threads = threads  # None: the first config's threads
        self.solo = solo  # a pack of one: run_trial
        self.trials: list[PackedTrial] = []  # every handle ever added, in order
        self._active: list[_Adapter] = []
        self._base: WorkerBase | None = None
        self._names: list[str] = []  # the wrapped modules, in model order
        self._targets: str | tuple[str, ...] | None = None
        self._layout = _Layout()
        self._closed = False
        # how the shared base runs (train.precision, train.gradient_checkpointing, lora.quantize):
        # set by the first config, the same for every member
        self._opts: tuple | None = None
        self._precision = "fp32"  # resolved (trial/base.py resolve_precision)
        self._scaler: torch.amp.GradScaler | None = None  # fp16: one dynamic loss scale for the pack
        self._checkpointing = False  # train.gradient_checkpointing: on while the linears are wrapped
        self._ckpt_on = False

    # 1a. the base model and the wrappers
    def _open(self, cfg: TrialConfig) -> WorkerBase:
        if self._base is None:
            self._base = get_base(cfg, self.cache, self.device)
            self.cache.pop("base", None)  # ours while the pack is open: no other pack may use it
            for p in self._base.model.parameters():
                p.requires_grad_(False)
            self._base_params = self._base.n_params
            self._cache_kw = cache_kwarg(self._base.model)
            if self.threads is None:
                self.threads = cfg.threads
            self._precision = self._base.key[2]
            if self._precision == "fp16":  # AMP's rule: scale the loss, skip a step that overflows
                self._scaler = torch.amp.GradScaler(self.device.split(":")[0])
            if cfg.gradient_checkpointing:
                supports_checkpointing(self._base.model, cfg.model)
                self._checkpointing = True
        elif self._base.key != base_key(cfg, self.device):
            raise ValueError(f"model {cfg.model!r} does not fit a pack on base {self._base.key[0]!r} "
                             f"({self.device}): one pack, one base model")  # fmt: skip
        return self._base

    def _wrap(self, on: bool) -> None:
        model = self._base.model
        for name in self._names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            current = getattr(owner, child)
            if on and not isinstance(current, MultiLoRALinear):
                setattr(owner, child, MultiLoRALinear(current, name, self._layout))
            elif not on and isinstance(current, MultiLoRALinear):
                setattr(owner, child, current.base_layer)
        # checkpointing only while wrapped: peft (a join, a save) never sees it on, so it adds no
        # hooks of its own, and the base goes back to the worker cache as it was loaded
        if self._checkpointing and on != self._ckpt_on:
            set_checkpointing(model, on)
            self._ckpt_on = on

    def _peft_init(self, cfg: TrialConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The adapter's initial A, B as peft makes them, on the unwrapped base, right after
        torch.manual_seed(cfg.seed). Costs one get_peft_model + unload per trial."""
        base = self._base
        self._wrap(False)
        try:
            peft_model = attach_lora(base.model, cfg)
            try:
                init, order = {}, []
                for name, mod in base.model.named_modules():
                    if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                        A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                        init[name] = (A.detach().clone(), B.detach().clone())
                        order += [A, B]
                trainable = [p for p in peft_model.parameters() if p.requires_grad]
                if [id(p) for p in trainable] != [id(p) for p in order]:  # clipping/AdamW order
                    raise RuntimeError("peft's trainable parameters are not the LoRA A/B pairs in module order")
            finally:
                base.model = peft_model.unload()
                del peft_model
        finally:
            if self._names:
                self._wrap(True)
        if not self._names:
            self._names = list(init)
        elif list(init) != self._names:  # never expected for equal target_modules
            raise ValueError(f"target_modules {cfg.target_modules} wrap other modules than the pack's")
        return init

    # 1b. joining
    def add(self, cfg: TrialConfig, *, report: Callable[[dict], None] | None = None,
            should_stop: Callable[[dict], bool] | None = None, save_to: str | None = None) -> PackedTrial:  # fmt: skip
        """Join the pack; trains from the next step(). Raises ValueError for a config that
        cannot be packed or is bad, TaskError for unusable data (nothing joins then).
        save_to: a directory where the trained adapter is written in peft's format when the
        trial ends well (all epochs, or stopped early)."""
        if self._closed:
            raise RuntimeError("the pack is closed")
        if self.solo and self.trials:
            raise ValueError("a solo pack trains one config; open a Pack for more")
        if cfg.lora_dropout != 0 and not self.solo:
            raise ValueError(f"lora_dropout must be 0 to pack a trial, got {cfg.lora_dropout!r}: "
                             "a random dropout mask per adapter cannot be shared; use run_trial")  # fmt: skip
        if self._targets is not None and cfg.target_modules != self._targets:
            raise ValueError(f"target_modules {cfg.target_modules} differ from the pack's {self._targets}")
        opts = (cfg.precision, cfg.gradient_checkpointing, cfg.quantize)
        if self._opts is not None and opts != self._opts:
            names = ("train.precision", "train.gradient_checkpointing", "lora.quantize")
            diff = [f"{n} {a!r} (the pack has {b!r})" for n, a, b in zip(names, opts, self._opts, strict=True) if a != b]
            raise ValueError(f"{', '.join(diff)}: a pack runs one base model one way, so its members must "
                             f"agree; train this config in another pack")  # fmt: skip
        base = self._open(cfg)
        self._opts = opts
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            train, val, test, cut = trial_data(cfg, self.cache, base)
            t0 = time.perf_counter()  # the trial's clock starts once base and data are ready
            init = self._peft_init(cfg)
        finally:
            torch.set_num_threads(prev)
        self._targets = cfg.target_modules
        self._layout.dropout = cfg.lora_dropout  # 0 unless solo
        self._wrap(True)
        handle = PackedTrial(cfg=cfg, save_to=save_to)
        adapter = _Adapter(cfg, handle, train=train, val=val, test=test, init=init,
                           base_params=self._base_params, t0=t0, report=report,
                           should_stop=should_stop, truncated=cut)  # fmt: skip
        handle.lora = {n: (adapter.A[n], adapter.B[n]) for n in init}
        self._active.append(adapter)
        self.trials.append(handle)
        return handle

    @property
    def model(self) -> torch.nn.Module | None:
        """The base model, its target linears wrapped (MultiLoRALinear), while the pack is open."""
        return None if self._base is None else self._base.model

    @property
    def active(self) -> list[PackedTrial]:
        return [a.handle for a in self._active]

    # 1c. one packed training step (+ the evaluations of adapters that end an epoch)
    def step(self) -> list[PackedTrial]:
        """One optimizer step for every adapter in the pack; returns those that left."""
        if not self._active:
            return []
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._step()
        finally:
            torch.set_num_threads(prev)

    def _step(self) -> list[PackedTrial]:
        base, device = self._base, self.device
        pad_id = base.tokenizer.pad_token_id
        adapters = list(self._active)
        G = len(adapters)
        left: list[PackedTrial] = []

        # 1. each adapter's own batch, right-padded, then packed:
        # G groups of n rows (a short group is filled with rows nobody reads: pad inputs,
        # -100 targets). Assembled on the CPU and moved in one copy.
        batches = [a.next_batch() for a in adapters]
        xy = [right_padded(b, pad_id, "cpu") for b in batches]  # [(n_g, T_g), (n_g, T_g)]
        n = max(x.shape[0] for x, _ in xy)
        T = max(x.shape[1] for x, _ in xy)
        X = torch.full((G * n, T), pad_id, dtype=torch.long)  # (G*n, T)
        Y = torch.full((G * n, T), -100, dtype=torch.long)
        for g, (x, y) in enumerate(xy):
            X[g * n : g * n + x.shape[0], : x.shape[1]] = x
            Y[g * n : g * n + y.shape[0], : y.shape[1]] = y
        X, Y = X.to(device), Y.to(device)
        n_ans = [n_targets(b) for b in batches]  # target tokens per adapter

        # 2. one forward of the base; every adapter's mean loss over its own target tokens
        # from one cross-entropy over the whole pack (one host sync for all G values)
        self._train_mode()
        scaler = self._scaler
        _bind(self._layout, adapters, self._names)
        try:  # bound until backward ends: gradient checkpointing runs the layers again there
            with autocast(self._precision, device):
                logits = base.model(input_ids=X, use_cache=False).logits  # (G*n, T, V); no KV cache to train
            nll = F.cross_entropy(logits.float().transpose(1, 2), Y, ignore_index=-100, reduction="none")
            counts = torch.tensor(n_ans, dtype=nll.dtype).to(device)
            losses = nll.view(G, n * T).sum(1) / counts  # (G,): each adapter's mean-reduced loss
            values = losses.detach().tolist()

            # 3. one backward for all: the adapters share no parameter, so each gets the gradient
            # of its own loss. A non-finite loss is left out so it cannot reach anyone else (its
            # rows' logits would send NaN through the shared cross-entropy: then each finite
            # adapter's loss is taken from its own slice instead).
            for a in adapters:
                for group in a.opt.param_groups:
                    group["lr"] = a.lr_at(a.step)
                a.opt.zero_grad(set_to_none=True)
            finite = [g for g, v in enumerate(values) if math.isfinite(v)]
            total = None
            if len(finite) == G:
                total = losses.sum()
            elif finite:
                total = torch.stack([
                    F.cross_entropy(logits[g * n : (g + 1) * n].float().transpose(1, 2),
                                    Y[g * n : (g + 1) * n], ignore_index=-100)
                    for g in finite
                ]).sum()  # fmt: skip
            if total is not None:
                (total if scaler is None else scaler.scale(total)).backward()
            del logits, nll, losses, total
        finally:
            self._layout.weights = self._layout.scale = None

        # 4. per adapter: its own gradient norm (all G from one batched norm and one host
        # sync), its divergence rule, its clipping to norm 1 and its AdamW step
        live = [adapters[g] for g in finite]
        if scaler is not None:  # fp16: the true gradients, each optimizer's overflow recorded
            for a in live:
                scaler.unscale_(a.opt)
        norms = [math.nan] * G
        slot = {g: i for i, g in enumerate(finite)}  # adapter index -> row of totals
        if live:
            per_tensor = torch._foreach_norm([p.grad for a in live for p in a.params], 2.0)
            P = len(live[0].params)  # the same target modules in every adapter: equal counts
            totals = torch.linalg.vector_norm(torch.stack(per_tensor).view(len(live), P), 2.0, dim=1)
            for g, norm in zip(finite, totals.tolist(), strict=True):
                norms[g] = norm
        for g, a in enumerate(adapters):
            v, grad_norm = values[g], norms[g]
            error = a.diverged(v, grad_norm)
            if error is not None and scaler is not None and math.isfinite(v) and not math.isfinite(grad_norm):
                a.stepped(v, n_ans[g], batches[g])  # fp16 overflow: the loss scale's, not the LR's:
                a.handle.skipped_steps += 1  # skip this step, as GradScaler does (its schedule moves on)
                continue
            if error is not None:
                self._leave(a, error=error)
                left.append(a.handle)
                continue
            # what clip_grad_norm_(params, 1.0) does with the norm it computes
            torch.nn.utils.clip_grads_with_norm_(a.params, 1.0, totals[slot[g]], foreach=True)
            a.opt.step()
            a.stepped(v, n_ans[g], batches[g])
        if scaler is not None and live:
            scaler.update()  # halves the scale after an overflow, grows it after 2000 clean steps

        # 5. adapters at the end of an epoch: evaluate together (one pass per shared eval set)
        ending = [a for a in adapters if a.handle.status == "running" and a.epoch_done]
        if ending:
            results = self._evaluate(ending)
            reported = []
            for a in ending:  # callbacks after all evaluations: they may add() or raise
                v, t = results[id(a)]
                metrics = a.metrics(v, t)
                a.handle.history.append(metrics)
                try:
                    if a.report is not None:
                        a.report(metrics)
                except Exception as e:  # a broken callback fails its own trial, not the pack
                    self._leave(a, error=e)
                    left.append(a.handle)
                    continue
                reported.append((a, metrics))
            # every report before any should_stop: a stopping rule that ranks the members
            # at this epoch sees all of them, not just those that came first
            for a, metrics in reported:
                try:
                    stop = a.should_stop is not None and a.should_stop(metrics)
                except Exception as e:
                    self._leave(a, error=e)
                    left.append(a.handle)
                    continue
                if stop or a.epoch == a.cfg.epochs:
                    a.handle.stopped = a.epoch < a.cfg.epochs
                    self._leave(a)
                    left.append(a.handle)
        return left

    def _train_mode(self) -> None:
        """The frozen base runs as at inference while its adapters train: eval mode, so its own
        dropout (GPT-2's 0.1 on embeddings, residuals and attention, nn.Dropout or the attention's
        functional dropout) is off and a trial's result depends on its config alone, packed or
        solo. Training mode goes only where it means something for LoRA: the wrappers (their flag
        gates lora_dropout) and, with gradient checkpointing, the modules that checkpoint (they
        recompute only in training mode). Set on each module alone, never on its children."""
        model = self._base.model
        model.eval()
        for m in model.modules():
            if isinstance(m, MultiLoRALinear) or (self._ckpt_on and getattr(m, "gradient_checkpointing", False) is True):
                m.training = True

    def _evaluate(self, ending: list[_Adapter]) -> dict[int, tuple[dict, dict]]:
        base = self._base
        base.model.eval()
        groups: dict[tuple, list[_Adapter]] = {}
        for a in ending:  # same eval sets and chunking -> one packed evaluation
            groups.setdefault((id(a.val), id(a.test), a.cfg.batch_size), []).append(a)
        out = {}
        for group in groups.values():
            # no activations kept for backward: 4x the training batch fits
            kw = dict(groups=len(group), pad_id=base.tokenizer.pad_token_id, cache_kw=self._cache_kw,
                      stop_ids=end_of_answer_ids(base.tokenizer),
                      batch_size=4 * group[0].cfg.batch_size, device=self.device)  # fmt: skip
            _bind(self._layout, group, self._names)
            try:
                with autocast(self._precision, self.device):
                    vs = evaluate(base.model, group[0].val, **kw)
                    ts = evaluate(base.model, group[0].test, **kw)
            finally:
                self._layout.weights = self._layout.scale = None
            for a, v, t in zip(group, vs, ts, strict=True):
                out[id(a)] = (v, t)
        return out

    def _leave(self, a: _Adapter, *, error: BaseException | None = None, save: bool = True) -> None:
        self._active.remove(a)
        a.handle.status = "ok" if error is None else "failed"
        a.handle.error = error
        if error is None and save and a.handle.save_to:
            self._save(a)
        a.handle.lora = {}
        a.opt = a.A = a.B = a.params = None  # free the adapter's weights and AdamW state

    def _save(self, a: _Adapter) -> None:
        """Write a finished adapter to its save_to in peft's format (trial/base.py save_lora): the
        base is unwrapped for it, as for a join, so the file is what a solo peft trial saves."""
        weights = {n: (a.A[n].detach().cpu(), a.B[n].detach().cpu()) for n in self._names}
        self._wrap(False)
        try:
            self._base.model = save_lora(self._base.model, a.cfg, weights, a.handle.save_to)
        finally:
            if self._names:
                self._wrap(True)

    # 1d. the loop, and closing
    def run(self, *, fill: Callable[[Pack], None] | None = None) -> list[PackedTrial]:
        """Step until the pack is empty. fill(pack), if given, is called before every step
        and may add() configs (e.g. as many as there are free slots). Returns every trial."""
        while True:
            if fill is not None:
                fill(self)
            if not self._active:
                return list(self.trials)
            self.step()

    def close(self) -> None:
        """Cancel what still runs, unwrap the base and give it back to the worker cache,
        checked unchanged: get_peft_model edits the base in place, so this is the check
        that every unload() gave back the weights that were loaded."""
        if self._closed:
            return
        self._closed = True
        for a in list(self._active):
            self._leave(a, save=False)
            a.handle.status = "cancelled"
        if self._base is None:
            return
        self._wrap(False)
        base = self._base
        base.model.eval()
        if weights_fingerprint(base.model) != base.fingerprint:  # never expected; don't trust it
            warnings.warn(f"base model {base.key[0]!r} changed in a pack; dropping it",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
        elif "base" not in self.cache:
            self.cache["base"] = base
        self._base = None
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> Pack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -----------------------------------------------------------------------------
# 2. The one-call API for the sweep


def run_packed(
    cfgs: list[TrialConfig],
    *,
    reports: list[Callable[[dict], None] | None] | None = None,
    should_stops: list[Callable[[dict], bool] | None] | None = None,
    cache: dict | None = None,
    max_adapters: int | None = None,
    threads: int | None = None,
    save_to: list[str | None] | None = None,
) -> list[list[dict] | BaseException]:
    """Train cfgs as one pack; per config, its history (the dicts passed to its report,
    as run_trial returns them) or the exception that ended it (TrialDiverged, ValueError,
    TaskError, or what its callback raised): one failure never stops the others.

    max_adapters caps how many train at once (default: all); the rest join, in order, as
    earlier ones leave. threads defaults to the first config's threads. save_to: per config, a
    directory for its trained adapter (peft format) or None."""
    if reports is not None and len(reports) != len(cfgs):
        raise ValueError(f"reports must have one entry per config: {len(reports)} for {len(cfgs)} configs")
    if should_stops is not None and len(should_stops) != len(cfgs):
        raise ValueError(f"should_stops must have one entry per config: {len(should_stops)} for {len(cfgs)}")
    if save_to is not None and len(save_to) != len(cfgs):
        raise ValueError(f"save_to must have one entry per config: {len(save_to)} for {len(cfgs)} configs")
    if max_adapters is not None and max_adapters < 1:
        raise ValueError(f"max_adapters must be >= 1, got {max_adapters!r}")
    results: list[list[dict] | BaseException | None] = [None] * len(cfgs)
    handles: dict[int, PackedTrial] = {}
    queue = list(range(len(cfgs)))
    cap = max_adapters or len(cfgs)

    def fill(pack: Pack) -> None:
        while queue and len(pack._active) < cap:
            i = queue.pop(0)
            try:
                handles[i] = pack.add(cfgs[i], report=reports[i] if reports else None,
                                      should_stop=should_stops[i] if should_stops else None,
                                      save_to=save_to[i] if save_to else None)  # fmt: skip
            except ValueError as e:  # a bad or unpackable config (TaskError is a ValueError)
                results[i] = e

    with Pack(cache=cache, threads=threads) as pack:
        pack.run(fill=fill)
    for i, h in handles.items():
        results[i] = h.error if h.status == "failed" else h.history
    return results  # type: ignore[return-value]


# -----------------------------------------------------------------------------
# 3. A solo trial: a pack of one


def run_trial(
    cfg: TrialConfig,
    *,
    report: Callable[[dict], None] | None = None,
    cache: dict | None = None,
    should_stop: Callable[[dict], bool] | None = None,
    save_to: str | None = None,
) -> list[dict]:
    """Fine-tune a LoRA adapter for cfg.epochs epochs, evaluating after each.

    Returns every metrics dict passed to report (keys: METRIC_KEYS). Raises TrialDiverged
    when training blows up (NaN/inf loss or gradient, or a dead zero gradient), TaskError for
    unusable data (e.g. characters the tokenizer does not know), ValueError for a bad config.
    Deterministic on CPU for a config: the same cfg gives the same metrics (wall time aside),
    whether the base model comes from cache or is loaded fresh. save_to: a directory where the
    trained adapter is written in peft's format (`PeftModel.from_pretrained(base, save_to)`).
    """
    with Pack(cache=cache, threads=cfg.threads, solo=True) as pack:
        handle = pack.add(cfg, report=report, should_stop=should_stop, save_to=save_to)
        pack.run()
    if handle.status == "failed":
        raise handle.error
    return handle.history
