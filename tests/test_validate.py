"""The validation module, and the boundaries that call it: refs, shas, repository URLs, names, routes, paths.

The reproductions of security issue 12 (a ref that ran a command through `git fetch --upload-pack`,
a route that injected nginx config, a symlinked Dockerfile, an env name that became a path, a token
in a repository URL) fail safely here: exit 2 or InputError/ConfigError, nothing cloned or written.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sunday_release import validate
from sunday_release.bluegreen import render_router_config
from sunday_release.config import Environment, check_paths, parse_config
from sunday_release.errors import ConfigError, InputError
from sunday_release.runner import CommandResult
from tests.conftest import FIXTURES

EVIL_REF = "refs/heads/--upload-pack=touch${IFS}%s;git-upload-pack"
TOKEN = "ghp_S3cr3tT0kenValue1234567890"
FUZZ = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --- refs and shas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["main", "feature/x-1", "v1.2.3", "refs/heads/main", "refs/tags/v1.2.3",
                                 "release/2026.12", "a" * 40, "abc1234", "user@topic", "fix+1"])
def test_good_refs(ref: str) -> None:
    assert validate.ref(ref) == ref


@pytest.mark.parametrize("ref", [
    EVIL_REF % "/tmp/x", "refs/heads/--upload-pack=x", "--upload-pack=x", "-rf", "refs/tags/-v1", "a/-b",
    "refs/heads/x; rm -rf /", "a..b", "x~1", "x^", "a:b", "x.lock", "/abs", "x/", "a//b", "@{u}", "@", "ref\n",
    "", "+main", "main:refs/heads/x", "x*", "${IFS}", "ma\u00efn", "a" * 256, ".hidden", "a/.b", "end.",
])
def test_bad_refs_are_refused_naming_the_argument(ref: str) -> None:
    with pytest.raises(InputError, match=r"^--ref: .* is not a valid git ref"):
        validate.ref(ref)


def test_a_ref_whose_short_form_is_an_option_says_why() -> None:
    with pytest.raises(InputError, match="starts with '-' and git would read it as an option"):
        validate.ref("refs/heads/--upload-pack=x")
    with pytest.raises(InputError, match=r"^--version: "):
        validate.ref("-x", "--version")


@pytest.mark.parametrize("value", ["abc1234", "a" * 40, "0" * 64])
def test_good_shas(value: str) -> None:
    assert validate.sha(value) == value


@pytest.mark.parametrize("value", ["HEAD~1", "abc", "A" * 40, "a" * 41, "-" + "a" * 39, "a" * 40 + "\n", ""])
def test_bad_shas(value: str) -> None:
    with pytest.raises(InputError, match=r"^--sha: .* is not a commit SHA"):
        validate.sha(value)


def test_refs_module_keeps_its_names() -> None:
    from sunday_release.refs import is_sha, short_ref, validate_ref, validate_repo, validate_sha

    assert validate_ref("main") == "main" and validate_sha(None) is None and is_sha("abc1234")
    assert short_ref("refs/tags/v1") == "v1" and validate_repo("https://github.com/a/b.git")
    with pytest.raises(InputError, match="--ref"):
        validate_ref(EVIL_REF % "/tmp/x")


# --- repositories ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://github.com/acme/app.git", "http://10.0.0.1:8080/app.git",
                                 "ssh://git@github.com/acme/app.git", "git://example.com/app.git",
                                 "git@github.com:acme/app.git", "github.com:acme/app.git", "file:///srv/app.git",
                                 "ssh://[::1]:22/app.git"])
def test_good_urls(url: str) -> None:
    assert validate.repo(url) == url


@pytest.mark.parametrize("url", [
    f"https://user:{TOKEN}@github.com/acme/app.git", f"https://{TOKEN}@github.com/acme/app.git",
    f"https://x-access-token:{TOKEN}@github.com/acme/app.git", f"http://{TOKEN}:@host/app.git",
    f"ssh://git:{TOKEN}@github.com/acme/app.git", f"git:{TOKEN}@github.com:acme/app.git",
    f"https://a@{TOKEN}@github.com/app.git",
])
def test_a_url_with_credentials_is_refused_and_the_secret_never_echoed(url: str) -> None:
    with pytest.raises(InputError) as caught:
        validate.repo(url)
    message = str(caught.value)
    assert message.startswith("--repo: a URL with a user name or password is refused")
    assert "credential helper" in message and "Prefect Secret" in message
    assert TOKEN not in message


@pytest.mark.parametrize(("url", "why"), [
    ("ext::sh -c touch% /tmp/x", "whitespace"), ("ext::sh", "remote-helper"), ("fd::3", "remote-helper"),
    ("-uxx", "starts with '-'"), ("--upload-pack=touch /tmp/x", "whitespace"), ("--upload-pack=x", "starts with"),
    (f"https://github.com/a/b.git?access_token={TOKEN}", "query string"), ("ftp://host/a.git", "transport"),
    ("https://-oProxyCommand=x/a.git", "host"), ("host:-oProxyCommand=x", "repository path"),
    ("-oProxyCommand=x:path", "starts with '-'"), ("https://github.com", "names no repository"), ("", "neither"),
])
def test_dangerous_repository_locations_are_refused(url: str, why: str) -> None:
    with pytest.raises(InputError, match=r"^--repo: ") as caught:
        validate.repo(url)
    assert why in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_a_local_repository_is_resolved(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(FIXTURES / "other-app")
    assert validate.repo(str(repo)) == str(repo.resolve())
    with pytest.raises(InputError, match="not a git repository"):
        validate.repo(str(tmp_path))


def test_redact_url_hides_user_part_and_query() -> None:
    assert validate.redact_url(f"https://u:{TOKEN}@h/x?t={TOKEN}") == "https://***@h/x?***"
    assert validate.redact_url(f"{TOKEN}@h:x") == "***@h:x"
    assert validate.redact_url(f"/u:{TOKEN}@/x") == "/***@/x"


# --- names, routes, variables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["../../etc", "Staging", "staging\n", "", "-x", "a" * 41, "st aging", "a/b", "1a"])
def test_bad_names(value: str) -> None:
    with pytest.raises(InputError, match=r"^--env: .* is not a valid name"):
        validate.name(value)


@pytest.mark.parametrize("value", ["/", "/api", "/api/v1/", "/a.b_c~d-e", "/.well-known"])
def test_good_routes(value: str) -> None:
    assert validate.route(value) == value


@pytest.mark.parametrize("value", ["/ { alias /etc/; } location /zz", "api", "/a//b", "/a/../b", "/..", "/a/./b",
                                   "/a b", "/a;", "/a{", "/$uri", "/a'", '/a"', "/api\n", "/" + "a" * 256, "~ /x"])
def test_bad_routes(value: str) -> None:
    with pytest.raises(InputError, match="is not a valid route"):
        validate.route(value)


@pytest.mark.parametrize(("key", "ok"), [("PATH", True), ("_x1", True), ("1X", False), ("A-B", False),
                                         ("A B", False), ("A=B", False), ("", False), ("A\n", False)])
def test_variable_names(key: str, ok: bool) -> None:
    assert validate.is_env_key(key) is ok


# --- paths -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A repository with symlinks: inside → inside, file → outside, directory → outside, a loop."""
    root = tmp_path / "repo"
    (root / "api").mkdir(parents=True)
    (root / "api" / "Dockerfile").write_text("FROM x AS test\n")
    (root / "api" / "inner").symlink_to("Dockerfile")
    (root / "api" / "passwd").symlink_to("/etc/passwd")
    (root / "api" / "etc").symlink_to("/etc")
    (root / "api" / "up").symlink_to("..")
    (root / "api" / "loop").symlink_to("loop")
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    return root


def test_inside_follows_symlinks_and_keeps_them_in(tree: Path) -> None:
    assert validate.inside(tree, "api/inner") == (tree / "api" / "Dockerfile").resolve()
    assert validate.inside(tree, "api/up/api/Dockerfile") == (tree / "api" / "Dockerfile").resolve()
    for bad in ("api/passwd", "api/etc/passwd", "out/x", "api/etc", "/etc/passwd", "../x", "api/../../x",
                "api/loop", "a\x00b"):
        with pytest.raises(InputError, match=r"^services.api.dockerfile: "):
            validate.inside(tree, bad, "services.api.dockerfile")


# --- the config: route injection, symlinked Dockerfiles, variable names -------------------------------------------

MINIMAL: dict[str, Any] = {"project": "shop", "services": {"api": {"context": "api", "port": 8000}}}


def with_service(**extra: Any) -> dict[str, Any]:
    return {**MINIMAL, "services": {"api": {"context": "api", "port": 8000, **extra}}}


def test_route_injection_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_service(route="/ { alias /etc/; } location /zz"))
    assert caught.value.path == "services.api.route"
    assert "expected a URL path" in caught.value.message


@pytest.mark.parametrize(("key", "value"), [("env", {"A B": "x"}), ("env", {"X": "a\nDATABASE_URL=evil"}),
                                            ("build_args", {"1X": "y"}), ("build_args", {"--x": "y"})])
def test_variable_names_and_one_line_values(key: str, value: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_service(**{key: value}))
    assert caught.value.path.startswith(f"services.api.{key}")


@pytest.mark.parametrize(("dockerfile", "context", "path"), [
    ("passwd", "api", "services.api.dockerfile"),  # the Dockerfile is a symlink to /etc/passwd
    ("etc/passwd", "api", "services.api.dockerfile"),  # a directory on the way is a symlink to /etc
    ("Dockerfile", "out", "services.api.context"),  # the context is a symlink leading out
])
def test_a_symlink_leading_out_of_the_repository_is_a_config_error(tree: Path, dockerfile: str, context: str,
                                                                   path: str) -> None:
    config = parse_config(with_service(dockerfile=dockerfile, context=context))
    with pytest.raises(ConfigError) as caught:
        check_paths(config, tree)
    assert caught.value.path == path and "leaves the repository" in caught.value.message


def test_a_symlink_inside_the_repository_is_fine(tree: Path) -> None:
    check_paths(parse_config(with_service(dockerfile="inner")), tree)


def test_the_router_config_refuses_a_route_the_config_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"services.api.route"):
        render_router_config("staging", 8081, {"/ { alias /etc/; } location /zz": "api"}, {"api": ["127.0.0.1:1"]},
                             "blue", tmp_path)
    with pytest.raises(InputError, match="--env"):
        render_router_config("x;\nevil", 8081, {"/": "api"}, {"api": ["127.0.0.1:1"]}, "blue", tmp_path)
    assert "location /api {" in render_router_config("staging", 8081, {"/api": "api"}, {"api": []}, "blue", tmp_path)


# --- env names that would become paths: target, tasks, flows, CLI ----------------------------------------------------


def test_an_env_name_is_refused_before_it_becomes_a_path(tmp_path: Path) -> None:
    from flows.cd import cd, rollback, saved_config, scale
    from flows.e2e import e2e
    from sunday_release.settings import Settings
    from sunday_release.targets import make_target
    from sunday_release.targets.docker import DockerTarget
    from tasks.backup import backup_database

    config = parse_config({**MINIMAL, "environments": {"staging": {"port": 8081}}})
    evil = "../../etc"
    calls: list[Callable[[], object]] = [
        lambda: make_target(config, evil, Settings.from_env()),
        lambda: DockerTarget(config, evil, Environment(port=8081), tmp_path, "docker", tmp_path / "db",
                             env_root=tmp_path / "envs"),
        lambda: saved_config(evil),
        lambda: cd.fn(evil, "a" * 40, "https://github.com/a/b.git"),
        lambda: rollback.fn(evil),
        lambda: scale.fn(evil, "api", 2),
        lambda: e2e.fn(evil),
        lambda: backup_database.fn(evil, "postgresql://x", "b", "db", 1, None, str(tmp_path)),
    ]
    for call in calls:
        with pytest.raises(InputError, match=r"^--env: '\.\./\.\./etc' is not a valid name"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv", [["cd", "--env", "../../etc", "--version", "a" * 40],
                                  ["rollback", "--env", "../../etc"], ["status", "--env", "../../etc"],
                                  ["scale", "--env", "../../etc", "--service", "api", "--replicas", "2"],
                                  ["scale", "--env", "staging", "--service", "../x", "--replicas", "2"],
                                  ["e2e", "--env", "../../etc"]])
def test_the_cli_refuses_a_bad_env_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing may reach a server
    assert main(argv) == 2
    assert "is not a valid name" in capsys.readouterr().err


# --- the ref that ran a command: CLI, task, webhook ----------------------------------------------------------------


@pytest.fixture
def app_repo(make_repo: Callable[..., Path]) -> Path:
    return make_repo(FIXTURES / "other-app")


def _workspaces() -> list[str]:
    from sunday_release.settings import Settings

    found = Settings.from_env().workspaces
    return sorted(os.listdir(found)) if found.exists() else []


def test_the_upload_pack_ref_exits_2_through_the_cli(app_repo: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    marker = tmp_path / "pwned"
    before = _workspaces()
    assert main(["ci", "--repo", str(app_repo), "--ref", EVIL_REF % marker]) == 2
    err = capsys.readouterr().err
    assert "--ref: " in err and "git would read it as an option" in err, err
    assert not marker.exists() and _workspaces() == before


def test_the_upload_pack_ref_in_a_push_event_is_refused() -> None:
    import json

    from adapters.webhook import PushPayloadError, parse_push

    body = json.dumps({"ref": EVIL_REF % "/tmp/x", "after": "a" * 40, "deleted": False,
                       "repository": {"clone_url": "https://github.com/acme/shop.git"},
                       "pusher": {"name": "o"}}).encode()
    with pytest.raises(PushPayloadError, match="ref"):
        parse_push(body)


def test_a_repository_url_with_a_token_exits_2_and_is_never_printed(capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from adapters.cli import main
    from tasks.source import clone_repo

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    url = f"https://user:{TOKEN}@github.com/acme/app.git"
    for argv in (["ci", "--repo", url, "--ref", "main"], ["ci", "--repo", url, "--ref", "main", "--json"],
                 ["cd", "--env", "staging", "--version", "a" * 40, "--repo", url]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert "a URL with a user name or password is refused" in err
        assert TOKEN not in out + err
    with pytest.raises(InputError) as caught:
        clone_repo.fn(url, "main", str(tmp_path / "ws"))
    assert TOKEN not in str(caught.value) and not (tmp_path / "ws").exists()


# --- fuzz ---------------------------------------------------------------------------------------------------------
# One string per example goes through every check (ref, sha, URL, name, route, path): 2,000 examples each.

_EVIL = ["-", "--", "--upload-pack=", "-oProxyCommand=", "--end-of-options", "${IFS}", ";", "\n", "\x00", "\x7f",
         "..", "/", "//", ".", "@{", "@", ":", "~", "^", "*", "[", "\\", " ", "{", "}", "'", '"', "$", "\u202e",
         "\u00e9", "\u2028", ".lock", "refs/heads/", "refs/tags/", "+", "ext::", "fd::", "?", "#", "%2e%2e",
         "https://", "ssh://", "file://", "git@", f"u:{TOKEN}@", f"{TOKEN}@", "github.com", "[::1]", ":22", "api",
         "Dockerfile", "in", "out", "up", "upup", "main", "v1.2.3", "abc1234", "a", "Z", "9", "_", "staging",
         "0123456789abcdef0123456789abcdef01234567"]
fuzzed = st.one_of(st.lists(st.sampled_from(_EVIL), max_size=8).map("".join), st.text(max_size=10))

_ROOT = Path(tempfile.mkdtemp(prefix="sunday-validate-"))  # built at import: the strategies below name it
atexit.register(shutil.rmtree, _ROOT, True)
(_ROOT / "repo" / "api").mkdir(parents=True)
(_ROOT / "repo" / "api" / "Dockerfile").write_text("FROM x\n")
(_ROOT / "repo" / "api" / "in").symlink_to("Dockerfile")
(_ROOT / "repo" / "api" / "out").symlink_to("/etc")
(_ROOT / "repo" / "api" / "up").symlink_to("..")
(_ROOT / "repo" / "api" / "upup").symlink_to("../..")


def _check_ref(value: str) -> None:
    try:
        validate.ref(value)
    except InputError as exc:
        assert str(exc).startswith("--ref: ")
        return
    parts = [value, validate.short_ref(value), *value.split("/")]
    assert all(p and not p.startswith("-") for p in parts), value
    assert re.fullmatch(r"[A-Za-z0-9._/+@#,=-]+", value) and ".." not in value and "@{" not in value


def _check_repo(value: str) -> None:
    try:
        checked = validate.repo(value)
    except InputError as exc:
        assert str(exc).startswith("--repo: ") and TOKEN not in str(exc)
        return
    assert not checked.startswith("-") and TOKEN not in checked
    assert not re.match(r"[A-Za-z0-9+.-]*::", checked)  # git's `helper::address`: runs git-remote-HELPER
    assert not any(c.isspace() or ord(c) < 32 for c in checked)
    if "://" in checked:
        netloc = checked.split("://", 1)[1].split("/", 1)[0]
        assert "@" not in netloc or (checked.startswith("ssh://") and ":" not in netloc.split("@")[0])


def _check_path(value: str) -> None:
    root = (_ROOT / "repo").resolve()
    try:
        found = validate.inside(root, value)
    except InputError:
        return
    assert found.is_relative_to(root) and found == found.resolve()


@FUZZ
@given(fuzzed)
def test_fuzz_every_check_returns_a_safe_value_or_refuses(value: str) -> None:
    _check_ref(value)
    _check_repo(value)
    _check_path(value)
    for check, pattern in ((validate.sha, r"[0-9a-f]{7,40}|[0-9a-f]{64}"), (validate.name, r"[a-z][a-z0-9-]{0,39}"),
                           (validate.route, r"/([A-Za-z0-9._~-]+/)*[A-Za-z0-9._~-]*")):
        try:
            assert re.fullmatch(pattern, check(value))
        except InputError:
            pass
    if validate.is_route(value):
        assert ".." not in value.split("/") and "//" not in value


@settings(max_examples=200, deadline=None, database=None)
@given(fuzzed)
def test_every_accepted_ref_is_one_git_accepts(value: str) -> None:
    try:
        validate.ref(value)
    except InputError:
        return
    done = subprocess.run(["git", "check-ref-format", "--allow-onelevel", value], capture_output=True, check=False)
    assert done.returncode == 0, value


# --- fuzz through clone_repo: what reaches git ------------------------------------------------------------------

_LOCAL = Path(tempfile.mkdtemp(prefix="sunday-validate-repo-"))
atexit.register(shutil.rmtree, _LOCAL, True)
subprocess.run(["git", "init", "-q", str(_LOCAL)], check=True)
_REFS = st.lists(st.sampled_from(["main", "v1", "a", "-", "--", "/", ".", "_", "+", "@", "refs/heads/", "refs/tags/",
                                  "--upload-pack=x", "abc1234"]), min_size=1, max_size=5).map("".join)
_OPTIONS = {"git", "-C", "init", "-q", "fetch", "--depth", "1", "--no-tags", "rev-parse", "--verify", "merge-base",
            "--is-ancestor", "update-ref", "switch", "--detach", "show", "-s", "--format=%H %cI"}


def test_fuzz_clone_repo_never_hands_git_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 generated (repo, ref, sha) through the task with a recording runner: every git argv has
    `--end-of-options`, nothing from the input before it, and no positional after it starts with `-`."""
    import tasks.source
    from tasks.source import clone_repo

    workspace = str(_ROOT / "ws")
    calls: list[Sequence[str]] = []
    seen = {"examples": 0, "reached_git": 0, "fetched": 0}

    def fake_run(argv: Sequence[str], **_: Any) -> CommandResult:  # records argv; runs nothing
        calls.append(list(argv))
        ok = found[0] or argv[3] not in ("fetch", "rev-parse")
        stdout = "c" * 40 + " 2026-12-03T00:00:00+00:00" if ok else ""
        return CommandResult(tuple(argv), 0 if ok else 1, stdout, "" if ok else "fatal: couldn't find remote ref", 0)

    found = [False]
    monkeypatch.setattr(tasks.source, "run", fake_run)

    @FUZZ
    @given(st.one_of(st.just(str(_LOCAL)), st.just(str(_LOCAL)),
                     st.sampled_from(["https://h.example/a.git", "git@h.example:a.git"]), fuzzed),
           st.one_of(fuzzed, _REFS, _REFS), st.one_of(st.none(), st.none(), st.just("abc1234"), fuzzed),
           st.booleans())
    def check(repo: str, ref: str, sha: str | None, ok: bool) -> None:
        calls.clear()
        found[0] = ok
        try:
            clone_repo.fn(repo, ref, workspace, sha)
        except InputError:
            pass
        seen["examples"] += 1
        seen["reached_git"] += bool(calls)
        seen["fetched"] += any("fetch" in argv for argv in calls)
        for argv in calls:
            assert argv[0] == "git" and "--end-of-options" in argv, argv
            cut = argv.index("--end-of-options")
            assert all(a in _OPTIONS or a == workspace for a in argv[:cut]), argv  # nothing from input before it
            assert not any(a.startswith("-") for a in argv[cut + 1:]), argv

    check()
    assert seen["examples"] >= 2000 and seen["fetched"] >= 50, seen  # the generator does reach git
