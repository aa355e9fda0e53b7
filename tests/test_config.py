"""Config validation: defaults, errors naming file + key path + expectation, property-based."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sunday_release.config import CONFIG_FILE, load_config, parse_config
from sunday_release.errors import ConfigError
from tests.conftest import APP

MINIMAL: dict[str, Any] = {"project": "shop", "services": {"api": {"context": "api", "port": 8000}}}


def write(tmp_path: Path, data: Any, dockerfile: str = "FROM x AS test\nFROM x AS runtime\n") -> Path:
    (tmp_path / "api").mkdir(exist_ok=True)
    (tmp_path / "api" / "Dockerfile").write_text(dockerfile)
    (tmp_path / CONFIG_FILE).write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return tmp_path


def test_minimal_config_gets_the_defaults() -> None:
    config = parse_config(MINIMAL)
    api = config.services["api"]
    assert api.dockerfile == "Dockerfile"
    assert api.platforms == ["linux/amd64", "linux/arm64"]
    assert api.health_path == "/healthz"
    assert api.checks.stage == "test" and api.checks.steps() == {}
    assert config.registry == "localhost:5000"
    assert set(config.environments) == {"staging", "production"}
    assert config.environments["production"].approval is True
    assert config.scan.fail_on == ["CRITICAL", "HIGH"]
    assert config.environments["staging"].health_interval == 10


@pytest.mark.parametrize("interval", [0, -5, 3601, "10s", 1.5])
def test_a_bad_health_interval_names_the_key(interval: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, "environments": {"staging": {"port": 8081, "health_interval": interval}}})
    assert caught.value.path == "environments.staging.health_interval", str(caught.value)


def test_the_sample_app_config_is_valid() -> None:
    config = load_config(APP)
    assert set(config.services) == {"backend", "frontend"}
    assert list(config.services["backend"].checks.steps()) == ["test", "lint", "typecheck"]


def test_unknown_key_names_file_path_and_allowed_keys(tmp_path: Path) -> None:
    data = {**MINIMAL, "services": {"api": {"context": "api", "port": 8000, "helth_path": "/h"}}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert err.value.file.endswith(CONFIG_FILE)
    assert err.value.path == "services.api.helth_path"
    assert "unknown key 'helth_path'" in err.value.message and "health_path" in err.value.message


def test_wrong_type_names_the_key_and_what_was_expected(tmp_path: Path) -> None:
    data = {**MINIMAL, "services": {"api": {"context": "api", "port": "eighty"}}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert err.value.path == "services.api.port"
    assert "integer" in err.value.message and "'eighty'" in err.value.message


def test_nested_list_path_is_shown_with_index(tmp_path: Path) -> None:
    data = {**MINIMAL, "services": {"api": {"context": "api", "port": 1, "checks": {"test": ["pytest", 3]}}}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert err.value.path == "services.api.checks.test[1]"


def test_missing_context_directory(tmp_path: Path) -> None:
    data = {**MINIMAL, "services": {"api": {"context": "nowhere", "port": 8000}}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert err.value.path == "services.api.context"
    assert "'nowhere' does not exist" in err.value.message


def test_context_may_not_leave_the_repository(tmp_path: Path) -> None:
    data = {**MINIMAL, "services": {"api": {"context": "../elsewhere", "port": 8000}}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert err.value.path == "services.api.context"


def test_check_stage_must_exist_in_the_dockerfile(tmp_path: Path) -> None:
    data = {**MINIMAL, "services": {"api": {"context": "api", "port": 8000, "checks": {"test": ["true"]}}}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data, dockerfile="FROM x AS build\n"))
    assert err.value.path == "services.api.checks.stage"
    assert "build" in err.value.message


def test_smoke_check_must_name_a_service() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "smoke": [{"service": "web", "path": "/"}]})
    assert "'web' is not one of the services" in err.value.message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "project: shop\nservices: [unclosed\n"))
    assert err.value.path.startswith("line ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no sunday-release\.yaml"):
        load_config(tmp_path)


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"project": "Bad Name", "services": {"api": {"port": 0}}})
    assert "problems" in err.value.message
    for key in ("project", "services.api.context", "services.api.port"):
        assert key in err.value.message


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000), st.text(max_size=12))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                     max_size=3), max_leaves=8)
_keys = st.sampled_from(["project", "services", "registry", "environments", "scan", "smoke", "context",
                         "port", "checks", "test", "platforms", "approval", "replicas", "junk"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_any_input_is_either_valid_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        parse_config(data)
    except ConfigError as exc:
        assert exc.message and exc.file == CONFIG_FILE


@settings(max_examples=100, deadline=None)
@given(port=st.integers(1, 65535), name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
       platforms=st.lists(st.sampled_from(["linux/amd64", "linux/arm64"]), min_size=1, max_size=2, unique=True))
def test_valid_configs_round_trip(port: int, name: str, platforms: list[str]) -> None:
    data = {"project": name, "services": {name: {"context": "x", "port": port, "platforms": platforms}}}
    config = parse_config(data)
    assert parse_config(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("image", ["debian:bookworm-slim", "library/debian", "ghcr.io/org/base:1.2",
                                   "localhost:5000/base/debian:bookworm", "python@sha256:" + "a" * 64])
def test_base_image_takes_what_the_docker_cli_takes(image: str) -> None:
    assert parse_config({"project": "shop", "base_image": image, "services": {"web": {"context": "web", "port": 8000}}}
                        ).base_image == image


@pytest.mark.parametrize("image", ["https://ghcr.io/org/base", "Debian:Bookworm", "debian bookworm", "debian:", ""])
def test_a_bad_base_image_names_the_key_and_the_value(image: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"project": "shop", "base_image": image, "services": {"web": {"context": "web", "port": 8000}}})
    assert caught.value.path == "base_image", str(caught.value)


@pytest.mark.parametrize("registry", ["localhost:5000", "ghcr.io", "ghcr.io/org", "registry.example.com:443/a/b",
                                      "123456789012.dkr.ecr.eu-west-1.amazonaws.com"])
def test_registry_is_a_host_and_an_optional_namespace(registry: str) -> None:
    assert parse_config({"project": "shop", "registry": registry, "services": {"web": {"context": "web", "port": 8000}}}
                        ).registry == registry


@pytest.mark.parametrize("registry", ["https://ghcr.io", "ghcr.io/org:tag", "ghcr.io/org@sha256:" + "a" * 64,
                                      "ghcr.io/Org", "ghcr.io/", "", "ghcr io", "registry/../x"])
def test_a_registry_with_a_scheme_tag_or_digest_is_refused(registry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"project": "shop", "registry": registry, "services": {"web": {"context": "web", "port": 8000}}})
    assert caught.value.path == "registry", str(caught.value)
