"""The torch side of a trial, never ray: config, layer, base, adapter, evaluate, pack.

One training loop: a pack of K LoRA adapters on one frozen base (trial/pack.py); a solo
trial, run_trial, is a pack of one."""

from scaling.trial.config import TrialConfig, TrialDiverged
from scaling.trial.layer import MultiLoRALinear
from scaling.trial.pack import Pack, PackedTrial, run_packed, run_trial

__all__ = ["MultiLoRALinear", "Pack", "PackedTrial", "TrialConfig", "TrialDiverged", "run_packed", "run_trial"]
