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


def test_an_unset_variable_in_a_url_with_a_password_quotes_it_redacted(tmp_path, monkeypatch):
    # the password is written in the spec, the host comes from an unset variable: the refusal
    # quotes the spec's value, which must not carry the password
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(_spec(f"postgresql://optuna:{PW}@${{DB_HOST}}:5432/optuna")))
    monkeypatch.delenv("DB_HOST", raising=False)
    for cmd in (["validate", str(f)], ["sweep", str(f), "--out", str(tmp_path / "run")]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert "environment variable DB_HOST must be set" in r.output
        assert PW not in r.output and "optuna:***@${DB_HOST}" in r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("password", ["SEC@RETPW9", "pa:ss@w0rd/x", f"{PW}"])
def test_a_storage_error_never_quotes_the_password(password):
    # a raw "@" (not %40) in a password: SQLAlchemy splits the URL at the first "@", so the
    # driver's error names the rest of the password as the host; nothing of it may reach the user
    from scaling.sweep.identity import open_storage

    url = f"postgresql://optuna:{password}@127.0.0.1:9/optuna"  # port 9: nothing listens
    with pytest.raises(SpecError) as err:
        open_storage(url)
    msg = str(err.value)
    assert "cannot open Optuna storage" in msg
    pieces = [p for p in password.replace(":", "@").replace("/", "@").split("@") if len(p) >= 3]
    assert pieces and not any(p in msg for p in pieces), msg


def test_scrub_leaves_ordinary_text_and_removes_every_form_of_the_password():
    from analysis.redact import scrub

    url = "postgresql://u:p%40ss%3Aword1@db/x?sslpassword=KEYPASS"
    text = f"error at {url}: auth failed for p@ss:word1 (KEYPASS) on host db"
    out = scrub(text, url)
    assert "word1" not in out and "KEYPASS" not in out and "p%40ss" not in out
    assert out.startswith("error at postgresql://u:***@db/x?sslpassword=***") and out.endswith("on host db")
    assert scrub("no url here", None) == "no url here"


def test_a_sweep_result_prints_no_password():
    from pathlib import Path

    from scaling.sweep.run import SweepResult

    res = SweepResult(run_dir=Path("r"), results=Path("r/results.parquet"),
                      optuna_url=f"postgresql://optuna:{PW}@db/optuna", trials_run=0, counts={},
                      orphans_resumed=0, wall_seconds=0.0)  # fmt: skip
    assert PW not in repr(res) and PW not in str(res)


def test_an_old_spec_copy_with_a_password_loses_it_on_the_next_write(tmp_path):
    # a run directory written before passwords were kept out of spec.yaml: the next sweep's
    # write of its run section removes the password from the copy it keeps
    from scaling.run_record import write_run

    spec = parse_spec(_spec(f"postgresql://optuna:{PW}@db:5432/optuna"))
    old = {**spec.model_dump(mode="json", exclude={"source"}),
           "tracking": {"mlflow": {"tracking_uri": f"https://bob:{PW}@mlflow.example"}}}  # fmt: skip
    old["storage"]["optuna"] = f"postgresql://optuna:{PW}@db:5432/optuna"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(old))
    write_run(spec, tmp_path, {"study_uid": "u1"})
    text = (tmp_path / "spec.yaml").read_text()
    assert PW not in text and "optuna:***@db:5432/optuna" in text and "bob:***@mlflow.example" in text
    assert yaml.safe_load(text)["run"] == {"study_uid": "u1"}
    assert not list(tmp_path.glob("*.tmp"))


def test_the_report_redacts_a_query_password():
    from analysis.redact import redact_url

    assert redact_url(f"postgresql://u@h/db?password={PW}") == "postgresql://u@h/db?password=***"
    import analysis.findings.study as study_section

    assert not hasattr(study_section, "_redact")  # one rule (analysis.redact), not a second weaker one


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://optuna:pa:ss@w0rd/x@127.0.0.1:9/optuna", "postgresql://optuna:***@127.0.0.1:9/optuna"),
        ("sqlite:////tmp/a@b/optuna.db", "sqlite:////tmp/a@b/optuna.db"),  # a path, not credentials
        ("postgresql://u:pw@h/db?application_name=a@b", "postgresql://u:***@h/db?application_name=a@b"),
    ],
)
def test_redact_url_with_raw_separators(url, shown):
    assert redact_url(url) == shown
