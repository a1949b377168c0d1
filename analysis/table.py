"""The results table's names: one row per evaluation, the columns and their dtypes.

Nothing of the project's run machinery lives here (no file I/O, no ray, no torch): this is the
vocabulary both sides share. ``scaling`` writes rows with these names (records, the sweep's
recorder, a trial's metrics dict); ``analysis`` reads tables with them.

Metrics carry a split prefix: ``val_*`` is the validation set (the only split any selection
reads: Optuna, early stopping, best LR), ``test_*`` is the held-out test set (the only split
reported as a headline number or fed to the laws).
"""

from __future__ import annotations

__all__ = [
    "COLUMNS",
    "EVAL_KEYS",
    "METRICS",
    "METRIC_KEYS",
    "RESULTS_FILE",
    "ROW_KEYS",
    "SELECT_METRIC",
    "SPLITS",
]

RESULTS_FILE = "results.parquet"

# per-split evaluation metrics; continuous ones (loss, per-token accuracy, answer log-prob)
# sit beside the discontinuous one (exact match) so every jump can be checked against them
METRICS = ("eval_loss", "token_accuracy", "exact_match", "answer_logprob")
SPLITS = ("val", "test")
EVAL_KEYS = tuple(f"{s}_{m}" for s in SPLITS for m in METRICS)

SELECT_METRIC = "val_eval_loss"  # selection reads the validation split only

# the keys of every metrics dict a trial reports (one per evaluation), in this order
METRIC_KEYS = (
    "epoch", "step", "train_loss", "train_tokens", "train_flops", "wall_seconds",
    *EVAL_KEYS, "trainable_params",
)  # fmt: skip

# the per-evaluation keys the recorder copies from a reported result into a row
ROW_KEYS = (
    "epoch", "step", "train_tokens", "train_flops", "train_loss", "trainable_params", "wall_seconds",
    "worker_pid", "worker_rss_mb", *EVAL_KEYS,
)  # fmt: skip

# name -> pandas dtype; the order is the column order of the file
COLUMNS: dict[str, str] = {
    "study": "string",
    "trial_id": "string",
    "optuna_trial": "Int64",
    "cell": "string",
    "phase": "string",  # search | repeat (extra seeds of the cell's best config)
    "dataset_size": "Int64",
    "epochs": "Int64",
    "learning_rate": "float64",
    "lora_r": "Int64",
    "lora_alpha": "float64",
    "seed": "Int64",
    "model": "string",
    "task": "string",
    "epoch": "Int64",
    "step": "Int64",
    "train_tokens": "Int64",
    "train_flops": "float64",
    "train_loss": "float64",
    **{k: "float64" for k in EVAL_KEYS},
    "trainable_params": "Int64",
    "wall_seconds": "float64",  # since the trial started; a packed trial shared it (pack_size)
    "pack_size": "Int64",  # most adapters trained at once in this trial's pack; 1 = alone
    "worker_pid": "Int64",  # the Ray worker process that ran the trial (reused between trials)
    "worker_rss_mb": "float64",  # its resident memory after this evaluation: leaks show here
    "status": "string",  # ok | failed | pruned
    "error": "string",
    "node": "string",
    "recorded_at": "string",
}
