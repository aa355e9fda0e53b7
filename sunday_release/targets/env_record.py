"""An environment's record (release history and last config) in its own PostgreSQL: the SQL and its parsing.

The docker target keeps one row per environment in the database `sunday_release` of the
environment's cluster: `environment(project, env, state jsonb, config jsonb, updated_at)`. The
database is owned by `postgres` and nobody else may connect (CONNECT revoked from PUBLIC and from
the application's role), so the application's migrations, backups and restores (database
`sunday`) never see it. Pure: this module builds the psql scripts and reads psql's output; the
target runs them (as the `postgres` OS user, the script on stdin, never a value on argv).

Decisions:
    * No value is ever spelled in SQL text: every string reaches the server hex-encoded
      (`convert_from(decode('…', 'hex'), 'UTF8')`), so no quoting can go wrong and no value can
      end a literal.
    * A refused statement leaves no value behind: each script first makes the session log no
      statement and only terse errors (no DETAIL/CONTEXT, which quote the refused JSON), and psql
      reports only the SQLSTATE (`VERBOSITY sqlstate`). A refused write changes nothing: it is one
      statement.
    * The release history is written as the pipeline made it except for NUL characters, which
      PostgreSQL's jsonb cannot hold: they become U+FFFD (a failure reason quoting a process's output
      must never make the history unwritable). The config is written as it is; a value the
      server refuses is bad input (`refused_write`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sunday_release import validate
from sunday_release.errors import InputError

__all__ = ["DATABASE", "Record", "parse_record", "prepare_script", "read_script", "refused_write", "scrub",
           "sqlstate", "write_script"]

DATABASE = "sunday_release"

# psql reports the SQLSTATE only; the session logs no statement and no DETAIL/CONTEXT (they quote values)
_QUIET = ("\\set ON_ERROR_STOP on\n\\set VERBOSITY sqlstate\n"
          "SET log_statement = 'none';\nSET log_min_duration_statement = -1;\n"
          "SET log_min_error_statement = 'panic';\nSET log_error_verbosity = 'terse';\n")
_SQLSTATE = re.compile(r"ERROR:\s+([0-9A-Z]{5})\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Record:
    """An environment's row: its release history and last config as JSON values (None where never written)."""

    state: dict[str, object] | None
    config: dict[str, object] | None
    updated_at: str


def _text(value: str) -> str:
    """`value` as an SQL expression that spells none of it: hex-encoded UTF-8."""
    return f"convert_from(decode('{value.encode().hex()}', 'hex'), 'UTF8')"


def _key(project: str, env: str) -> tuple[str, str]:
    return validate.name(project, "project"), validate.name(env, "--env")


def prepare_script(app_role: str) -> str:
    """The script (run on database `postgres`) that creates `sunday_release` and its table when missing.

    The database belongs to `postgres`; CONNECT is revoked from PUBLIC and from `app_role`, so the
    application's role cannot reach it. Idempotent.
    """
    role = validate.name(app_role, "app role")
    return (_QUIET
            + f"SELECT 'CREATE DATABASE {DATABASE} OWNER postgres' WHERE NOT EXISTS "
              f"(SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
            + f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;\n"
            + f"SELECT 'REVOKE ALL ON DATABASE {DATABASE} FROM {role}' WHERE EXISTS "
              f"(SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec\n"
            + f"\\connect {DATABASE}\n"
            + _QUIET
            + "CREATE TABLE IF NOT EXISTS environment (project text NOT NULL, env text NOT NULL, state jsonb, "
              "config jsonb, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (project, env));\n"
            + "REVOKE ALL ON TABLE environment FROM PUBLIC;\n")


def scrub(value: object) -> object:
    """`value` (JSON data) with every NUL character of its strings replaced by U+FFFD (jsonb refuses NUL)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def write_script(project: str, env: str, column: Literal["state", "config"], value: Mapping[str, object]) -> str:
    """One upsert of `column` (the release history or the last config) of `project`/`env`'s row."""
    if column not in ("state", "config"):
        raise ValueError(f"not a column of the record: {column}")
    project, env = _key(project, env)
    data = json.dumps(scrub(value) if column == "state" else value, separators=(",", ":"))
    return (_QUIET
            + f"INSERT INTO environment (project, env, {column}, updated_at) VALUES ({_text(project)}, {_text(env)}, "
              f"{_text(data)}::jsonb, now()) ON CONFLICT (project, env) DO UPDATE SET {column} = EXCLUDED.{column}, "
              "updated_at = EXCLUDED.updated_at;\n")


def read_script(project: str, env: str) -> str:
    """The script that prints `project`/`env`'s row as one JSON line (nothing when there is none); psql -At."""
    project, env = _key(project, env)
    return (_QUIET
            + "SELECT json_build_object('state', state, 'config', config, 'updated_at', updated_at) FROM environment "
              f"WHERE project = {_text(project)} AND env = {_text(env)};\n")


def parse_record(stdout: str) -> Record | None:
    """The row `read_script` printed, None when there was none."""
    line = stdout.strip()
    if not line:
        return None
    data = json.loads(line)
    return Record(state=data.get("state"), config=data.get("config"), updated_at=str(data.get("updated_at") or ""))


def sqlstate(stderr: str) -> str | None:
    """The SQLSTATE of the error psql reported (VERBOSITY sqlstate), None when it reported none."""
    found = _SQLSTATE.findall(stderr)
    return found[-1] if found else None


def refused_write(where: str, what: str, stderr: str) -> InputError | None:
    """InputError when the server refused a value of the write (SQLSTATE class 22, data exception), else None.

    The message names the environment, what was written and the SQLSTATE, never the value.
    """
    code = sqlstate(stderr)
    if code is None or not code.startswith("22"):
        return None
    return InputError(f"{where}: PostgreSQL refused a value of the {what} (SQLSTATE {code}); nothing was written "
                      "(the value is not repeated here)")
