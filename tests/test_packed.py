"""Packed LoRA trials: a packed adapter reports what run_trial (a pack of one) reports for its config.

Known answers come from run_trial itself: every packed history is compared with the
history of the same config trained alone (to 1e-4 on every metric but wall time)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from analysis.table import METRIC_KEYS
from scaling.tiny import BUILTIN_TINY
from scaling.trial import MultiLoRALinear, Pack, TrialConfig, TrialDiverged, run_packed, run_trial
from scaling.trial.layer import _Layout as Layout

EVAL = 64  # small eval sets keep the tests quick
TOL = 1e-4


def _cfg(**overrides) -> TrialConfig:
    base = dict(model=BUILTIN_TINY, task_kind="addition", task_digits=2, task_path=None,
                task_seed=0, dataset_size=256, epochs=2, learning_rate=3e-3,
                validation_size=EVAL, test_size=EVAL)  # fmt: skip
    return TrialConfig(**{**base, **overrides})


# different D, epochs, LR, seed, rank and batch size: ragged packs on every axis
CONFIGS = [
    _cfg(),
    _cfg(dataset_size=160, epochs=3, learning_rate=1e-2, seed=1),
    _cfg(dataset_size=96, epochs=1, learning_rate=5e-3, seed=2, lora_r=4, lora_alpha=8),
    _cfg(dataset_size=100, epochs=2, learning_rate=2e-3, seed=3, batch_size=16),
]


def _assert_same(packed: list[dict], alone: list[dict]) -> None:
    assert [m["epoch"] for m in packed] == [m["epoch"] for m in alone]
    for p, a in zip(packed, alone, strict=True):
        assert tuple(p) == METRIC_KEYS
        for k in ("epoch", "step", "train_tokens", "train_flops", "trainable_params"):
            assert p[k] == a[k], k  # counts are exact
        for k in METRIC_KEYS:
            if k != "wall_seconds":
                assert abs(p[k] - a[k]) <= TOL, (k, p["epoch"], p[k], a[k])


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    """One worker cache shared by the solo and packed runs, like a Ray actor's."""
    return {}


@pytest.fixture(scope="module")
def alone(worker):
    return [run_trial(c, cache=worker) for c in CONFIGS]


# 1. the multi-LoRA layer against peft's own LoRA layer -----------------------------------


def test_multi_lora_linear_matches_peft_per_group():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10))
    peft_model = get_peft_model(model, LoraConfig(r=3, lora_alpha=6, target_modules=["0"]))
    layer = peft_model.base_model.model[0]
    x = torch.randn(3 * 2, 5, 12)  # 3 groups of 2 rows
    As = [torch.randn(3, 12) for _ in range(3)]
    Bs = [torch.randn(10, 3) for _ in range(3)]
    layout = Layout()
    layout.weights = {"0": (torch.stack(As), torch.stack(Bs))}
    layout.scale = torch.full((3, 1, 1), 2.0)
    got = MultiLoRALinear(layer.base_layer, "0", layout)(x)
    with torch.no_grad():
        for g in range(3):
            layer.lora_A["default"].weight.copy_(As[g])
            layer.lora_B["default"].weight.copy_(Bs[g])
            torch.testing.assert_close(got[2 * g : 2 * g + 2], layer(x[2 * g : 2 * g + 2]),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip  (values ~10-100)
    layout.weights = None
    assert torch.equal(MultiLoRALinear(layer.base_layer, "0", layout)(x), layer.base_layer(x))


# 2. equivalence with run_trial ------------------------------------------------------------


@pytest.mark.slow
def test_packed_adapters_report_what_they_report_alone(worker, alone):
    seen: list[list[dict]] = [[] for _ in CONFIGS]
    got = run_packed(CONFIGS, reports=[s.append for s in seen], cache=worker)
    for packed, solo, reported in zip(got, alone, seen, strict=True):
        assert packed == reported
        _assert_same(packed, solo)
    assert [len(h) for h in got] == [2, 3, 1, 2]
    # the worker's base is back in the cache, unwrapped, and a solo trial is unaffected
    model = worker["base"].model
    assert not any(isinstance(m, MultiLoRALinear) for m in model.modules())
    _assert_same(run_trial(CONFIGS[2], cache=worker), alone[2])


@pytest.mark.slow
def test_one_base_copy_whatever_k(worker, alone):
    base = worker["base"]
    before = {n: p.data_ptr() for n, p in base.model.named_parameters()}
    n_params = sum(p.numel() for p in base.model.parameters())
    with Pack(cache=worker) as pack:
        for k in range(1, 6):
            pack.add(_cfg(seed=k, dataset_size=64))
            model = pack._base.model
            assert model is base.model and "base" not in worker  # the pack holds the one base
            assert sum(p.numel() for p in model.parameters()) == n_params  # adapters live outside
            ptrs = {n.replace(".base_layer", ""): p.data_ptr() for n, p in model.named_parameters()}
            assert ptrs == before  # the very same weight storage, never copied
            assert sum(isinstance(m, MultiLoRALinear) for m in model.modules()) == 28
        pack.step()
    assert worker["base"] is base
    assert {n: p.data_ptr() for n, p in base.model.named_parameters()} == before


# 3. failures stay with their adapter ------------------------------------------------------


@pytest.mark.slow
def test_a_diverging_adapter_fails_alone(worker, alone):
    def broken_report(metrics):
        raise RuntimeError("recorder is down")

    cfgs = [CONFIGS[0], _cfg(learning_rate=1e3, seed=7), CONFIGS[2], _cfg(lora_dropout=0.1)]
    got = run_packed(cfgs, reports=[None, None, broken_report, None], cache=worker)
    _assert_same(got[0], alone[0])
    assert isinstance(got[1], TrialDiverged)
    assert "epoch 1, step" in str(got[1]) and "(learning_rate=1000)" in str(got[1])
    assert isinstance(got[2], RuntimeError) and "recorder is down" in str(got[2])
    assert isinstance(got[3], ValueError) and "lora_dropout must be 0" in str(got[3])


# 4. joining and leaving -------------------------------------------------------------------


@pytest.mark.slow
def test_adapters_join_and_leave_mid_run(worker, alone):
    # max_adapters=2: CONFIGS[2] (1 epoch) leaves first, CONFIGS[3] takes its slot
    got = run_packed([CONFIGS[0], CONFIGS[2], CONFIGS[3]], cache=worker, max_adapters=2)
    for packed, solo in zip(got, (alone[0], alone[2], alone[3]), strict=True):
        _assert_same(packed, solo)
    # a config added from inside a report callback (an arbitrary step of another adapter),
    # and an adapter stopped early by its should_stop hook
    with Pack(cache=worker) as pack:
        late = []
        first = pack.add(CONFIGS[1], report=lambda m: m["epoch"] == 1 and late.append(pack.add(CONFIGS[0])))
        stopped = pack.add(CONFIGS[3], should_stop=lambda m: m["epoch"] == 1)
        pack.run()
    assert first.status == "ok" and not first.stopped
    _assert_same(first.history, alone[1])
    (joined,) = late
    assert joined.status == "ok"
    _assert_same(joined.history, alone[0])
    assert stopped.status == "ok" and stopped.stopped
    _assert_same(stopped.history, alone[3][:1])


# 5. a base with dropout of its own (GPT-2: 0.1 on embeddings, residuals and attention) ---------


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from conftest import save_tiny_checkpoint

    return save_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2") / "model")


@pytest.mark.slow
def test_the_frozen_bases_own_dropout_is_off_so_a_packed_gpt2_trial_equals_it_alone(gpt2_dir):
    # the pack used to train with the base in train mode: GPT-2's dropout drew masks over the
    # whole packed batch, so a member's result depended on its pack (0.008 val loss apart here)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gpt2_dir)
    assert (config.embd_pdrop, config.resid_pdrop, config.attn_pdrop) == (0.1, 0.1, 0.1)
    cfgs = [_cfg(model=gpt2_dir, target_modules="all-linear", dataset_size=128, learning_rate=1e-2),
            _cfg(model=gpt2_dir, target_modules="all-linear", dataset_size=96, learning_rate=3e-3, seed=1, epochs=1)]  # fmt: skip
    cache: dict = {}
    alone = [run_trial(c, cache=cache) for c in cfgs]
    for packed, solo in zip(run_packed(cfgs, cache=cache), alone, strict=True):
        _assert_same(packed, solo)
    _assert_same(run_trial(cfgs[0], cache={}), alone[0])  # a fresh worker: the same trial
    assert alone[0][-1]["val_eval_loss"] < alone[0][0]["train_loss"]  # it learned
    # LoRA's own dropout is still lora_dropout's: a solo trial with it trains differently
    dropped = run_trial(_cfg(**{**cfgs[1].as_dict(), "lora_dropout": 0.2}), cache=cache)
    assert dropped[0]["train_loss"] != alone[1][0]["train_loss"]  # the masks changed training


def test_configs_a_pack_cannot_hold_are_refused():
    pack = Pack(cache={})
    with pytest.raises(ValueError, match=r"lora_dropout must be 0 to pack a trial, got 0.05"):
        pack.add(_cfg(lora_dropout=0.05))
    with pytest.raises(ValueError, match="one entry per config"):
        run_packed([_cfg()], reports=[None, None])
    pack.close()
    with pytest.raises(RuntimeError, match="closed"):
        pack.add(_cfg())
