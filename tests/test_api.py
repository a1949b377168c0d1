"""The README's "From Python" block runs as written, inside a Ray the caller started (as a
notebook does), and gives the table, the best LR and the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def _from_python_block() -> str:
    text = README.read_text()
    section = text.split("## From Python", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README's From Python section has no python block"
    return m.group(1)


def test_analysis_imports_lazily_and_exports_its_public_names():
    import subprocess
    import sys

    code = ("import sys, analysis; assert 'scipy' not in sys.modules, 'import analysis pulled scipy';"
            "from analysis import fit_law, best_lr, detect_jumps; assert 'ray' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
    import analysis

    assert {"fit_law", "best_lr", "detect_jumps", "check_mirage", "analyse"} <= set(analysis.__all__)


@pytest.mark.slow
def test_readme_python_block_runs_as_written_in_the_callers_ray(tmp_path, monkeypatch, tiny_model_dir):
    import ray

    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the "notebook's" Ray
    try:
        before = ray.get_runtime_context().get_node_id()
        ns: dict = {}
        exec(compile(_from_python_block(), str(README), "exec"), ns)
        assert ray.is_initialized() and ray.get_runtime_context().get_node_id() == before
    finally:
        ray.shutdown()
    table = ns["table"]
    assert table["trial_id"].nunique() == 3 and set(table["status"]) == {"ok"}
    assert sorted(table["dataset_size"].unique().tolist()) == [64, 128, 256]
    best = ns["best"]
    assert len(best.cells) == 3 and best.cells["lr_best"].between(1e-3, 1e-2).all()
    # one trial per cell cannot give a rule with intervals: the API says why instead
    assert best.rule is None and best.rule_reason
    assert Path(ns["paths"].html).exists() and Path(ns["paths"].json).exists()
    assert ns["law"].params_["alpha"] > 0
