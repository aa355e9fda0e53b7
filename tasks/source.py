"""Getting the code: clone one ref of a repository into a fresh workspace."""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from deployments.projects import find_policy
from sunday_release import validate
from sunday_release.config import CONFIG_FILE, PipelineConfig, load_config
from sunday_release.errors import CommandFailed, ConfigError, InputError, PipelineError
from sunday_release.policy import enforce
from sunday_release.refs import is_sha
from sunday_release.runner import run
from tasks._common import LOCAL_CACHE, ON_THIS_MACHINE, RETRY_DELAYS, is_transient, progress

__all__ = ["Checkout", "clone_repo", "load_pipeline_config"]


@dataclass(frozen=True)
class Checkout:
    """A ref of a repository checked out at `path`."""

    repo: str
    ref: str
    path: str
    commit: str
    committed_at: str  # ISO 8601, the commit's committer date


# every git call: `--end-of-options` before positionals; only these transports, and never a password prompt
_GIT_ENV = {"GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh", "GIT_TERMINAL_PROMPT": "0"}


def _fetch(repo: str, ref: str, dest: Path, depth: int | None = 1) -> None:
    run(["git", "init", "-q", "--end-of-options", str(dest)], env=_GIT_ENV)
    shallow = ["--depth", str(depth)] if depth else []
    candidates = [ref] if is_sha(ref) or ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]
    for candidate in candidates:
        fetched = run(["git", "-C", str(dest), "fetch", "-q", *shallow, "--no-tags", "--end-of-options", repo,
                       candidate], env=_GIT_ENV, timeout=600, check=False)
        if fetched.ok:
            return
        err = fetched.stderr.lower()
        if not any(s in err for s in ("couldn't find remote ref", "not our ref", "no such remote ref",
                                      "unadvertised object", "invalid refspec", "not a valid object")):
            fetched.check_returncode()  # a network or server problem: CommandFailed, retried
    if is_sha(ref):  # a commit that no branch or tag names directly: fetch all, then look it up
        run(["git", "-C", str(dest), "fetch", "-q", "--end-of-options", repo, "+refs/heads/*:refs/remotes/origin/*",
             "+refs/tags/*:refs/tags/*"], env=_GIT_ENV, timeout=600)
        resolved = run(["git", "-C", str(dest), "rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}"],
                       env=_GIT_ENV, check=False)
        if resolved.ok:
            run(["git", "-C", str(dest), "update-ref", "--end-of-options", "FETCH_HEAD", resolved.stdout.strip()],
                env=_GIT_ENV)
            return
    raise InputError(f"--ref: {ref!r} was not found in {repo}")


def _check_on_ref(dest: Path, repo: str, ref: str, sha: str) -> None:
    """InputError unless `sha` is the fetched tip of `ref` or one of its ancestors."""
    found = run(["git", "-C", str(dest), "rev-parse", "--verify", "-q", "--end-of-options", f"{sha}^{{commit}}"],
                env=_GIT_ENV, check=False)
    on_ref = found.ok and run(["git", "-C", str(dest), "merge-base", "--is-ancestor", "--end-of-options",
                                found.stdout.strip(), "FETCH_HEAD"], env=_GIT_ENV, check=False).ok
    if not on_ref:
        raise InputError(f"--sha: commit {sha!r} is not on {ref!r} of {repo}")


def _disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (ENOSPC), in git (its stderr) or in this process."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return isinstance(exc, CommandFailed) and "no space left on device" in exc.stderr_tail.lower()


@task(name="clone", task_run_name="clone", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=0.5,
      retry_condition_fn=is_transient, cache_policy=ON_THIS_MACHINE,
      cache_expiration=LOCAL_CACHE, persist_result=True)
def clone_repo(repo: str, ref: str, workspace: str, sha: str | None = None) -> Checkout:
    """Check out `ref` of `repo` (path or URL) into `workspace`, replacing what was there.

    Args:
        repo: a local git repository or a git URL.
        ref: branch, tag, full ref or commit SHA.
        workspace: the directory to create; removed first if it exists.
        sha: the commit of `ref` to check out (a push event's `after`), when the ref may have moved
            on since: it must be the tip of `ref` or one of its ancestors (InputError otherwise).

    Raises:
        InputError: `repo`, `ref` or `sha` is not valid (`sunday_release.validate`): checked here, as a
            deployment run or an event reaches this task without the CLI's or the flow's checks.
    """
    repo, ref = validate.repo(repo), validate.ref(ref)
    sha = None if sha is None else validate.sha(sha)
    dest = Path(workspace)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(repo, ref, dest, depth=None if sha else 1)
        if sha:
            _check_on_ref(dest, repo, ref, sha)
        # `git checkout --detach` refuses `--end-of-options` (git 2.39); `git switch` takes it
        run(["git", "-C", str(dest), "switch", "-q", "--detach", "--end-of-options", sha or "FETCH_HEAD"],
            env=_GIT_ENV)
    except (CommandFailed, InputError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)  # never a truncated checkout left behind
        if _disk_full(exc):
            raise PipelineError(f"the workspace disk is full: no space left on device for the checkout of {ref} "
                                f"in {dest} (SUNDAY_HOME/workspaces); the partial checkout was removed: free "
                                f"space there and Retry\n{exc}") from None
        raise
    show = run(["git", "-C", str(dest), "show", "-s", "--format=%H %cI", "--end-of-options", "HEAD"],
               env=_GIT_ENV).stdout.split()
    progress(f"checked out {ref} at {show[0][:12]}")
    return Checkout(repo=repo, ref=ref, path=str(dest), commit=show[0], committed_at=show[1])


@task(name="load-config", task_run_name="load-config", persist_result=True)
def load_pipeline_config(checkout: Checkout) -> PipelineConfig:
    """Read and validate the checkout's sunday-release.yaml (ConfigError: nothing gets built).

    The config is checked against the project's policy on the server (`deployments.projects`): it may
    tighten it, never loosen it (ConfigError naming the key). The error names the file as the user
    knows it: the repository, the ref and the commit, not the workspace it was checked out to.
    """
    where = f"{checkout.repo} at {checkout.ref} ({checkout.commit[:12]}): {CONFIG_FILE}"
    try:
        config = load_config(checkout.path)
    except ConfigError as exc:
        file = exc.file.replace(checkout.path, f"{checkout.repo} at {checkout.ref} ({checkout.commit[:12]}):", 1)
        raise ConfigError(file.replace(":/", ": ", 1), exc.path, exc.message) from None
    policy = find_policy(checkout.repo, config.project)
    config = enforce(config, policy, where)
    whose = "registered policy" if policy.registered else "default policy (project not registered)"
    progress(f"config valid: project {config.project}, services {', '.join(config.services)}; {whose}")
    return config
