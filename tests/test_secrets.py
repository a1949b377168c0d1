"""A password in a storage URL is never printed or written (issue: Nothing lost, section 5)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from scaling.cli import app
from scaling.spec import SpecError, parse_spec, redact_url

PW = "s3cr3t-Zq81xK"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://optuna:{PW}@db:5432/optuna", "postgresql://optuna:***@db:5432/optuna"),
        (f"postgresql+psycopg://u:{PW}@10.0.0.2/db", "postgresql+psycopg://u:***@10.0.0.2/db"),
        ("postgresql://u:p%40ss%3Aw@h/db", "postgresql://u:***@h/db"),  # URL-encoded "@" and ":"
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # a raw "@": the last one ends it
        (f"postgresql://u@h/db?sslmode=require&password={PW}", "postgresql://u@h/db?sslmode=require&password=***"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),  # no password: unchanged
        ("sqlite:////tmp/x/optuna.db", "sqlite:////tmp/x/optuna.db"),
        ("${SCALING_OPTUNA_URL}", "${SCALING_OPTUNA_URL}"),  # a reference is shown as written
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def _spec(optuna: str, source: str = "study.yaml") -> dict:
    return {"name": "s", "axes": {"dataset_size": [64]}, "learning_rate": {"low": 1e-3, "high": 1e-2},
            "storage": {"optuna": optuna}}  # fmt: skip


def test_the_record_written_to_disk_has_no_password_and_keeps_a_reference():
    spec = parse_spec(_spec(f"postgresql://optuna:{PW}@db:5432/optuna"))
    assert spec.optuna_url(None) == f"postgresql://optuna:{PW}@db:5432/optuna"  # what connects
    rec = spec.to_record()
    assert PW not in yaml.safe_dump(rec) and rec["storage"]["optuna"] == "postgresql://optuna:***@db:5432/optuna"
    ref = parse_spec(_spec("${SCALING_OPTUNA_URL}"))
    assert ref.to_record()["storage"]["optuna"] == "${SCALING_OPTUNA_URL}"  # a resume reads it again


def test_a_bad_storage_value_is_quoted_redacted():
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(f"mongodb://optuna:{PW}@db/optuna"), source="study.yaml")
    assert "study.yaml: storage.optuna:" in str(err.value) and PW not in str(err.value)
    assert "optuna:***@db" in str(err.value)


def test_an_unset_variable_is_named_and_a_set_one_is_never_printed(tmp_path, monkeypatch):
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(_spec("${SCALING_OPTUNA_URL}")))
    monkeypatch.delenv("SCALING_OPTUNA_URL", raising=False)
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 2
    assert f"{f}: storage.optuna: environment variable SCALING_OPTUNA_URL must be set" in r.output
    monkeypatch.setenv("SCALING_OPTUNA_URL", f"postgresql://optuna:{PW}@db:5432/optuna")
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 0 and PW not in r.output and "optuna:***@db" in r.output


def test_a_tracking_uri_password_is_never_written_or_printed(tmp_path, monkeypatch):
    data = {**_spec("sqlite:////tmp/o.db"), "tracking": {"mlflow": {"tracking_uri": f"https://bob:{PW}@mlflow.example"}}}
    spec = parse_spec(data)
    assert spec.mlflow_uri() == f"https://bob:{PW}@mlflow.example"  # what connects
    rec = spec.to_record()
    assert PW not in yaml.safe_dump(rec) and rec["tracking"]["mlflow"]["tracking_uri"] == "https://bob:***@mlflow.example"
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump({**data, "tracking": {"mlflow": {"tracking_uri": "${MLFLOW_URI}"}}}))
    monkeypatch.delenv("MLFLOW_URI", raising=False)
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 2, r.output
    assert f"{f}: tracking.mlflow.tracking_uri: environment variable MLFLOW_URI must be set" in r.output
    monkeypatch.setenv("MLFLOW_URI", f"https://bob:{PW}@mlflow.example")
    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 0 and PW not in r.output and "bob:***@mlflow.example" in r.output, r.output
