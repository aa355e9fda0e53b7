"""The release record's SQL and parsing (pure: no PostgreSQL here; tests/test_shared_state.py runs it for real)."""

from __future__ import annotations

import json

import pytest

from sunday_release.errors import InputError
from sunday_release.targets import env_record


def test_no_value_is_spelled_in_the_sql() -> None:
    value = {"reason": "it's \\'; DROP TABLE environment; --", "secret-ish": "CANARY-7f3a"}
    script = env_record.write_script("shop", "staging", "config", value)
    assert "CANARY" not in script and "DROP" not in script and "shop" not in script
    assert json.dumps(value, separators=(",", ":")).encode().hex() in script  # hex-encoded, whole
    assert script.count("INSERT INTO environment") == 1 and "ON CONFLICT (project, env) DO UPDATE SET config" in script
    assert "SET log_min_error_statement = 'panic'" in script and "VERBOSITY sqlstate" in script
    assert "shop" not in env_record.read_script("shop", "staging")


def test_only_known_columns_and_valid_names() -> None:
    with pytest.raises(ValueError, match="not a column"):
        env_record.write_script("shop", "staging", "updated_at", {})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="--env"):
        env_record.write_script("shop", "../etc", "state", {})
    with pytest.raises(InputError, match="app role"):
        env_record.prepare_script("x; DROP")


def test_the_database_is_closed_to_everyone_but_postgres() -> None:
    script = env_record.prepare_script("sunday")
    assert "CREATE DATABASE sunday_release OWNER postgres" in script
    assert "REVOKE ALL ON DATABASE sunday_release FROM PUBLIC;" in script
    assert "REVOKE ALL ON DATABASE sunday_release FROM sunday" in script
    assert "CREATE TABLE IF NOT EXISTS environment (project text NOT NULL, env text NOT NULL, state jsonb, " \
           "config jsonb, updated_at timestamptz" in script


def test_nul_characters_of_the_history_are_replaced_not_refused() -> None:
    state = {"history": [{"reason": "exit 1: a\x00b"}], "env": "staging"}
    script = env_record.write_script("shop", "staging", "state", state)
    expected = json.dumps({"history": [{"reason": "exit 1: a\ufffdb"}], "env": "staging"}, separators=(",", ":"))
    assert expected.encode().hex() in script
    config = env_record.write_script("shop", "staging", "config", {"x": "a\x00"})  # the config is written as it is
    assert json.dumps({"x": "a\x00"}, separators=(",", ":")).encode().hex() in config


def test_rows_and_refusals_are_read_from_psqls_output() -> None:
    assert env_record.parse_record("\n") is None
    row = env_record.parse_record('{"state" : {"env": "staging"}, "config" : null, '
                                  '"updated_at" : "2026-12-04T05:00"}\n')
    assert row == env_record.Record(state={"env": "staging"}, config=None, updated_at="2026-12-04T05:00")
    refused = env_record.refused_write("shop/staging", "config", "psql:<stdin>:7: ERROR:  22P05\n")
    assert isinstance(refused, InputError)
    assert str(refused) == ("shop/staging: PostgreSQL refused a value of the config (SQLSTATE 22P05); nothing was "
                            "written (the value is not repeated here)")
    assert env_record.refused_write("shop/staging", "config", "ERROR:  42P01\n") is None  # not the value's fault
    assert env_record.refused_write("shop/staging", "config", "psql: error: connection refused") is None
