"""The secrets canary: a unique value in every secret place, the whole pipeline run, and not one of them found
anywhere a person or a process can read (security issue 12, point 7).

Secret places: the webhook HMAC secret, the S3 key pair of backups, the notification webhook URL, the
environment's database password, a git token (in a `--repo` URL and in a signed push's clone URL), and a
service's `secrets:` value in AWS Secrets Manager (moto), rotated between the two deploys.
Runs, all through the CLI: CI, a failing CI, CD (with a verified backup), a second CD, a rollback, an emergency
`backup` and `backups`, a CD whose secret is gone, a `restore` of the emergency backup under load, E2E, `status`,
the webhook receiver, and CI/CD given a URL with a token. Searched: every stdout and stderr; through the Prefect API
every log, artifact, flow run (parameters, name, every state and its message), task run,
event, variable and block document; the manifests and image configs (labels, history) of every image CI
pushed and the local images the containers run; `docker inspect` of the environment's containers (all but
Config.Env, where the app's DATABASE_URL belongs); every file and file name under SUNDAY_HOME,
SUNDAY_ENV_ROOT, PREFECT_HOME, the Prefect server's home (its SQLite database) and the environment's
database root. Plain text and base64.

Each canary is also shown to have been used: a canary nobody read would prove nothing.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from adapters.webhook import sign
from tests.canary import Canaries, Hits, MotoS3, NotifyReceiver, sigv4_signed_with
from tests.conftest import _SERVER_HOME, APP, ROOT, free_port, prefect_database_dump
from tests.test_cd import Env
from tests.test_ci_flow import CLI, _break_a_backend_test, images_for, sunday
from tests.waiting import wait_for_healthz

BUCKET = "sunday-backups"
K6 = str(Path(sys.executable).parent / "k6")
K6_SCRIPT = ROOT / "infra" / "local" / "k6" / "constant_load.js"
SECRET = "sunday/api"  # in AWS Secrets Manager (moto): a JSON object, the backend's API_TOKEN under "token"
REF = f"aws-sm://{SECRET}#token"


def _backend_env(env_name: str, color: str) -> str:
    """The environment variables the backend's containers of `color` were started with (docker inspect)."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sunday.env={env_name}", "--filter",
                          f"name=-backend-{color}-"], capture_output=True, text=True, check=True).stdout.split()
    assert ids, f"no backend container of {color}"
    return subprocess.run(["docker", "inspect", "-f", "{{json .Config.Env}}", *ids], capture_output=True,
                          text=True, check=True).stdout


def _restore_under_load(cli: Callable[..., subprocess.CompletedProcess[str]], env: Env, secrets: Any,
                        canaries: Canaries, backup: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Issue 18's acceptance: `restore` of the emergency backup on the environment under constant k6 load: no request
    fails, the new database holds exactly the backup's rows (not a row written after it), the old one is kept and
    `status` names the database and the backup."""
    # the deploys' secret, back in the manager (the restore starts the live release's containers: they need it)
    secrets.create_secret(Name=SECRET, SecretString=json.dumps({"token": canaries.service_secret_rotated}))
    first = f"postgresql://sunday:{canaries.db_password}@127.0.0.1:{env.db_port}/sunday"
    with psycopg.connect(first, autocommit=True) as conn:  # written after the backup: not in what is restored
        conn.execute("INSERT INTO boards (name) VALUES ('written after the backup')")
        after = conn.execute("SELECT count(*) FROM boards").fetchone()
    summary = tmp_path / "k6-restore.json"
    load = subprocess.Popen([K6, "run", "--quiet", "-e", f"BASE_URL={env.url}", "-e", "VUS=10", "-e", "DURATION=10m",
                             "--summary-export", str(summary), str(K6_SCRIPT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        done = json.loads(cli("restore", "restore", "--env", env.name, "--from", backup["key"], "--json").stdout)
        time.sleep(2)
    finally:
        load.send_signal(signal.SIGINT)
        _, err = load.communicate(timeout=60)
    metrics = json.loads(summary.read_text())["metrics"]
    requests, failed = metrics["http_reqs"]["count"], metrics["http_req_failed"]["passes"]
    assert requests > 100 and failed == 0, f"{failed} of {requests} requests failed during the restore\n{err}"
    assert done["restored_from"] == backup["key"] and done["table_counts"] == backup["table_counts"], done
    database = done["database"]
    with psycopg.connect(first, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM boards").fetchone() == after  # the old database: kept as it was
    with psycopg.connect(first.removesuffix("/sunday") + f"/{database}") as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                  for t in ("boards", "items")}
    assert counts == {t: backup["table_counts"][t] for t in counts}, (counts, backup["table_counts"])
    boards = httpx.get(f"{env.url}/api/boards").json()["boards"]
    assert [b["name"] for b in boards] == ["in the backup"], boards  # the app reads the restored database
    status = json.loads(cli("status after restore", "status", "--env", env.name, "--json").stdout)
    assert (status["database"], status["restored_from"]) == (database, backup["key"]), status
    print(f"\nrestore under load: {requests} requests, {failed} failed; restored {backup['key']} into {database}")
    return dict(done)


def _push(sha: str, clone_url: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "before": "f" * 40, "after": sha, "deleted": False,
                       "repository": {"full_name": "acme/shop", "clone_url": clone_url},
                       "pusher": {"name": "octocat"}, "head_commit": {"id": sha}}).encode()


def _deliver(port: int, body: bytes, secret: bytes) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/webhook", content=body, timeout=30, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body)})


def _run_webhook_receiver(canaries: Canaries, repo: Path, api: str, env: dict[str, str],
                          sha: str) -> tuple[list[httpx.Response], str, str]:
    """`sunday-release webhook` with the canary secret; a signed push, a push signed with another secret, and a
    signed push whose clone URL carries a token. Returns the responses and the receiver's stdout, stderr."""
    port = free_port()
    proc = subprocess.Popen([*CLI, "webhook", "--port", str(port), "--repo", str(repo)], cwd=ROOT, text=True,
                            env={**os.environ, **env, "PREFECT_API_URL": api}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    responses: list[httpx.Response] = []
    try:
        wait_for_healthz(proc, port, timeout=90)
        secret = canaries.webhook_secret.encode()
        slug = f"canary-shop-{uuid.uuid4().hex[:8]}"
        responses.append(_deliver(port, _push(sha, f"https://github.com/acme/{slug}.git"), secret))
        responses.append(_deliver(port, _push(sha, f"https://github.com/acme/{slug}-other.git"), b"another secret"))
        responses.append(_deliver(port, _push(sha, f"https://x-access-token:{canaries.git_token_push}@github.com/"
                                                   f"acme/{slug}.git"), secret))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    return responses, stdout, stderr


def test_the_search_finds_a_canary_in_text_in_base64_and_in_file_names(tmp_path: Path) -> None:
    """The search itself: a canary inside a pickled, base64-encoded result (how Prefect persists results) is
    found at every alignment, and so is one in a file name; text without one is clean."""
    import base64
    import pickle

    canaries = Canaries()
    hits = Hits(canaries)
    hits.scan("text", "plain", f"x{canaries.s3_secret_access_key}y")
    for pad in range(3):
        blob = b"p" * pad + pickle.dumps({"dsn": f"postgresql://u:{canaries.db_password}@h/db"})
        hits.scan("blob", f"base64 at {pad}", base64.b64encode(blob))
        hits.scan("blob", f"urlsafe base64 at {pad}", base64.urlsafe_b64encode(blob))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"{canaries.git_token}.txt").write_text("nothing here")
    hits.scan_tree("tree", tmp_path)
    assert [h.split(" in ")[0] for h in hits.found] == [
        "s3_secret_access_key", *["db_password (base64)"] * 6, "git_token"], hits.found
    clean = Hits(canaries)
    clean.scan("text", "clean", "canary-db-password-0000000000000000 " + canaries.db_password[:-1])
    assert clean.found == []


@pytest.mark.docker
def test_no_secret_reaches_a_log_an_artifact_a_label_or_a_file(
        prefect_api: str, docker_engine: str, starts_services: None, make_repo: Callable[..., Path],
        git: Callable[..., str], tmp_path: Path) -> None:  # starts_services: it starts moto_server (MotoS3) itself
    started, since = time.monotonic(), datetime.now(UTC) - timedelta(minutes=1)
    canaries = Canaries()
    env = Env(backup=True)
    notify = NotifyReceiver(canaries.notify_token)
    s3 = MotoS3(tmp_path / "moto-recording.jsonl").start()
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    timings: dict[str, float] = {}
    try:
        assert "AWS_PROFILE" not in os.environ  # the canaries are boto3's only credentials in the runs
        s3.client().create_bucket(Bucket=BUCKET)
        # The database password: in place before the first deploy creates the role with it.
        password_file = env.db_root / "sunday" / env.name / "password"  # DB_ROOT/PROJECT/ENV
        password_file.parent.mkdir(parents=True)
        password_file.write_text(canaries.db_password)
        password_file.chmod(0o600)
        env.env |= {
            "SUNDAY_WEBHOOK_SECRET": canaries.webhook_secret,
            "AWS_ACCESS_KEY_ID": canaries.s3_access_key_id,
            "AWS_SECRET_ACCESS_KEY": canaries.s3_secret_access_key,
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),  # the canaries are the only keys
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "SUNDAY_AWS_CREDENTIALS_BLOCK": "",
            "SUNDAY_BACKUP_BUCKET": BUCKET, "SUNDAY_S3_ENDPOINT": s3.endpoint_url,
            "SUNDAY_NOTIFY_URL": notify.url,
            "SUNDAY_K6_VUS": "2", "SUNDAY_K6_DURATION": "3s",
        }

        def cli(label: str, *args: str, expect: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
            began = time.monotonic()
            done = sunday(*args, api=prefect_api, env=env.env)  # every secret is in every command's environment
            timings[label] = round(time.monotonic() - began, 1)
            outputs[label] = done
            assert done.returncode in expect, f"{label}: exit {done.returncode}\n{done.stderr[-3000:]}"
            return done

        secrets = s3.client("secretsmanager")
        secrets.create_secret(Name=SECRET, SecretString=json.dumps({"token": canaries.service_secret}))
        env.env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = s3.endpoint_url

        def edit(repo: Path) -> None:
            env.edit(repo)
            config = repo / "sunday-release.yaml"
            secret = f"    secrets: {{API_TOKEN: '{REF}'}}\n"  # the backend's
            config.write_text(config.read_text().replace("    metrics_path: /metrics\n",
                                                         f"    metrics_path: /metrics\n{secret}", 1))

        repo = make_repo(APP, edit=edit)
        git(repo, "checkout", "-q", "-b", "broken")
        _break_a_backend_test(repo)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "a failing unit test")
        broken = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-q", "main")
        v1 = git(repo, "rev-parse", "HEAD")

        ci = [json.loads(cli("ci v1", "ci", "--repo", str(repo), "--ref", "main", "--json").stdout)]
        failing = json.loads(cli("ci failing", "ci", "--repo", str(repo), "--ref", "broken", "--json",
                                 expect=(1,)).stdout)
        assert failing["services"]["backend"]["tests"]["failed"] == 1, failing
        cli("cd v1", "cd", "--env", env.name, "--version", v1, "--repo", str(repo), "--json")
        index = repo / "frontend" / "public" / "index.html"
        index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
        git(repo, "commit", "-qam", "v2")
        v2 = git(repo, "rev-parse", "HEAD")
        ci.append(json.loads(cli("ci v2", "ci", "--repo", str(repo), "--ref", "main", "--json").stdout))
        secrets.put_secret_value(SecretId=SECRET, SecretString=json.dumps({"token": canaries.service_secret_rotated}))
        cli("cd v2", "cd", "--env", env.name, "--version", v2, "--repo", str(repo), "--json")  # the rotated value
        backends = {color: _backend_env(env.name, color) for color in ("blue", "green")}
        assert f"API_TOKEN={canaries.service_secret}" in backends["blue"], backends  # v1's containers, as started
        assert f"API_TOKEN={canaries.service_secret_rotated}" in backends["green"], backends  # v2's: rotated
        back = json.loads(cli("rollback", "rollback", "--env", env.name, "--json").stdout)
        assert back["version"] == v1, back
        # a secret gone from the manager: the next deploy stops before any container starts, naming the reference
        secrets.delete_secret(SecretId=SECRET, ForceDeleteWithoutRecovery=True)
        before = env.container_ids()
        gone = cli("cd, secret missing", "cd", "--env", env.name, "--version", v2, "--repo", str(repo), "--json",
                   expect=(1,))
        assert f"{REF}: no such secret in AWS Secrets Manager" in gone.stderr, gone.stderr
        assert env.container_ids() == before and httpx.get(f"{env.url}/").status_code == 200
        with psycopg.connect(f"postgresql://sunday:{canaries.db_password}@127.0.0.1:{env.db_port}/sunday",
                             autocommit=True) as conn:  # a row the backup holds, which the restore brings back
            conn.execute("INSERT INTO boards (name) VALUES ('in the backup')")
        emergency = json.loads(cli("backup", "backup", "--env", env.name, "--json").stdout)  # on demand, now
        assert emergency["verified"] and emergency["key"].startswith(f"db/sunday/{env.name}/"), emergency
        assert "boards" in emergency["table_counts"], emergency  # the app's tables, counted in the dump
        listed = json.loads(cli("backups", "backups", "--env", env.name, "--json").stdout)
        assert len(listed) == 3 and listed[0]["key"] == emergency["key"], listed  # newest first
        restored = _restore_under_load(cli, env, secrets, canaries, emergency, tmp_path)
        assert len(json.loads(cli("backups again", "backups", "--env", env.name, "--json").stdout)) == 3, restored
        e2e = cli("e2e", "e2e", "--env", env.name, "--json", expect=(0, 1))  # k6 numbers on a busy box may fail
        cli("status", "status", "--env", env.name, "--json")
        token_url = f"https://x-access-token:{canaries.git_token}@127.0.0.1:9/acme/shop.git"
        refused = cli("ci with a token", "ci", "--repo", token_url, "--ref", "main", "--json", expect=(2,))
        assert "refused" in refused.stderr, refused.stderr
        cli("cd with a token", "cd", "--env", env.name, "--version", v1, "--repo", token_url, "--json", expect=(2,))
        began = time.monotonic()
        responses, hook_out, hook_err = _run_webhook_receiver(canaries, repo, prefect_api, env.env, v1)
        timings["webhook"] = round(time.monotonic() - began, 1)
        outputs["webhook"] = subprocess.CompletedProcess(["webhook"], 0, hook_out, hook_err)

        # ---------------------------------------------------------------- every canary was really used
        accepted, forged, with_token = responses
        assert (accepted.status_code, accepted.json()["status"]) == (202, "accepted"), accepted.text  # canary HMAC
        assert forged.status_code == 401, forged.text
        # a push whose clone URL carries a token is refused: it would reach the event and CI's parameters
        assert (with_token.status_code, with_token.json()["field"]) == (400, "repository.clone_url"), with_token.text
        assert notify.received and {path for path, _ in notify.received} == {notify.path}
        assert {"start", "success", "rollback"} <= set(notify.events()), notify.events()
        stored = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"db/sunday/{env.name}/").get("Contents", [])
        backups = sorted(o["Key"] for o in stored if o["Key"].endswith(".dump"))
        assert len(backups) == 3, stored  # one verified backup per deploy, and the emergency one
        assert sorted(o["Key"] for o in stored if o["Key"].endswith(".json")) == [  # each with its manifest
            key.removesuffix(".dump") + ".json" for key in backups], stored
        uploads = [r for r in s3.requests() if r["method"] == "PUT" and f"/{BUCKET}/db/sunday/{env.name}/" in r["url"]]
        assert len(uploads) == 6 and all(
            sigv4_signed_with(r, canaries.s3_access_key_id, canaries.s3_secret_access_key) for r in uploads), uploads
        with psycopg.connect(f"postgresql://sunday:{canaries.db_password}@127.0.0.1:{env.db_port}/sunday") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the role's password is the canary

        # ---------------------------------------------------------------- search
        hits = Hits(canaries)
        for label, done in outputs.items():
            hits.scan("stdout", label, done.stdout)
            hits.scan("stderr", label, done.stderr)
        for response in responses:
            hits.scan("webhook response", str(response.status_code), response.content)
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        hits.scan_prefect_api(since)
        refs = [s["image"] for summary in ci for s in summary["services"].values() if s.get("image")]
        assert refs, ci
        for ref in sorted(set(refs)):
            hits.scan_registry_image(ref)
        container_envs = hits.scan_containers(env.name)
        assert container_envs, "the environment has containers"
        running = subprocess.run(["docker", "inspect", "-f", "{{.Image}}", *container_envs], capture_output=True,
                                 text=True, check=True).stdout.split()
        hits.scan_local_images([*running, *images_for(v1), *images_for(v2), *images_for(broken)])
        # Config.Env is where the app's DATABASE_URL belongs: the backend's holds the canary password.
        assert any(canaries.db_password in " ".join(e) for e in container_envs.values()), container_envs

        home, env_root = Path(os.environ["SUNDAY_HOME"]), Path(os.environ["SUNDAY_ENV_ROOT"])
        # the declared secret store: 0600 --env-files, 0700 dir
        store = env_root / "sunday" / env.name / "secrets"
        assert stat.S_IMODE(store.stat().st_mode) == 0o700
        stored = list(store.iterdir())
        assert stored and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored), stored
        assert any(canaries.db_password in p.read_text() for p in stored)
        hits.scan_tree("SUNDAY_HOME", home)
        hits.scan_tree("SUNDAY_ENV_ROOT", env_root, skip=lambda p: p.parent == store)
        hits.scan_tree("PREFECT_HOME", Path(os.environ["PREFECT_HOME"]))
        hits.scan_tree("Prefect server home", _SERVER_HOME)
        dump = prefect_database_dump()  # every row the server stored: the runs of this test are in it
        assert v1 in dump and v2 in dump, "the dump holds this test's runs"
        hits.scan("Prefect database", "pg_dump", dump)
        hits.scan_tree("database root", env.db_root, skip=lambda p: p == password_file)
        seconds = round(time.monotonic() - started, 1)
        print(f"\nsecrets canary: {seconds}s; steps {timings}; e2e exit {e2e.returncode}; notifications "
              f"{notify.events()}; searched "
              f"{hits.searched}")
        assert not hits.found, "canaries found:\n" + "\n".join(hits.found)
    finally:
        notify.stop()
        s3.stop()
        env.teardown()
