"""infra/terraform: every file parses, module calls match module variables, variables are typed and
described, the security-relevant settings are in place, and trivy config finds no HIGH/CRITICAL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra_checks import (
    TERRAFORM,
    TRIVYIGNORE,
    module_call_violations,
    module_variables,
    parse_tf,
    trivy_config,
    variable_violations,
)

MODULES = TERRAFORM / "modules"
ENVIRONMENTS = TERRAFORM / "environments"
MODULE_NAMES = ("vpc", "eks", "rds", "elasticache", "s3", "monitoring", "ecr", "pipeline_iam")
ENV_NAMES = ("staging", "production")
TF_FILES = sorted(TERRAFORM.rglob("*.tf"))


def _id(path: Path) -> str:
    return str(path.relative_to(TERRAFORM))


def _value(raw: Any) -> Any:
    """An HCL literal as python-hcl2 returns it, without the quotes of strings."""
    return raw.strip('"') if isinstance(raw, str) else raw


def module_block(env: str, name: str) -> dict[str, Any]:
    """The arguments of `module "name"` in environments/ENV/main.tf."""
    for block in parse_tf(ENVIRONMENTS / env / "main.tf").get("module") or []:
        for label, body in block.items():
            if _value(label) == name:
                return {key: _value(value) for key, value in body.items()}
    raise KeyError(f"environments/{env}/main.tf has no module {name!r}")


def resource(module: str, kind: str, name: str) -> dict[str, Any]:
    """The body of `resource "kind" "name"` in modules/MODULE/main.tf."""
    for block in parse_tf(MODULES / module / "main.tf").get("resource") or []:
        for kind_label, named in block.items():
            for name_label, body in named.items():
                if _value(kind_label) == kind and _value(name_label) == name:
                    return dict(body)
    raise KeyError(f"modules/{module}/main.tf has no resource {kind}.{name}")


# --- structure ----------------------------------------------------------------------------------


def test_the_expected_tree_exists() -> None:
    assert len(TF_FILES) > 30
    assert sorted(p.name for p in MODULES.iterdir()) == sorted(MODULE_NAMES)
    for env in ENV_NAMES:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "backend.tf", "terraform.tfvars"):
            assert (ENVIRONMENTS / env / name).is_file(), f"environments/{env}/{name}"


@pytest.mark.parametrize("path", TF_FILES, ids=_id)
def test_every_tf_file_parses(path: Path) -> None:
    parsed = parse_tf(path)
    assert parsed, f"{path} is empty"


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_every_module_has_its_files_and_pins_aws_5(module: str) -> None:
    directory = MODULES / module
    for name in ("variables.tf", "main.tf", "outputs.tf", "versions.tf"):
        assert (directory / name).is_file(), f"modules/{module}/{name}"
    terraform = parse_tf(directory / "versions.tf")["terraform"][0]
    aws = terraform["required_providers"][0]["aws"]
    assert (_value(aws["source"]), _value(aws["version"])) == ("hashicorp/aws", "~> 5.0")
    outputs = parse_tf(directory / "outputs.tf")["output"]
    assert outputs and all(_value(body.get("description", "")) for block in outputs for body in block.values())


@pytest.mark.parametrize("path", sorted(TERRAFORM.rglob("variables.tf")), ids=_id)
def test_every_variable_is_typed_and_described(path: Path) -> None:
    assert parse_tf(path).get("variable"), f"{path} declares no variable"
    assert variable_violations(path) == []


@pytest.mark.parametrize("env", ENV_NAMES)
def test_module_calls_match_the_module_variables(env: str) -> None:
    main = ENVIRONMENTS / env / "main.tf"
    assert module_call_violations(main) == []
    called = {_value(label) for block in parse_tf(main)["module"] for label in block}
    expected = {"vpc", "eks", "s3", "monitoring", "pipeline_iam"}
    if env == "production":
        expected |= {"rds", "elasticache", "ecr"}
    assert called == expected


@pytest.mark.parametrize("env", ENV_NAMES)
def test_tfvars_set_exactly_declared_variables(env: str) -> None:
    declared = module_variables(ENVIRONMENTS / env)
    tfvars = {key: value for key, value in parse_tf(ENVIRONMENTS / env / "terraform.tfvars").items()
              if not key.startswith("__")}  # python-hcl2 metadata such as __comments__
    assert sorted(tfvars.keys() - declared.keys()) == []
    required = {name for name, body in declared.items() if "default" not in body}
    assert sorted(required - tfvars.keys()) == []
    assert _value(tfvars["environment"]) == env


@pytest.mark.parametrize("env", ENV_NAMES)
def test_remote_state_backend(env: str) -> None:
    backend = parse_tf(ENVIRONMENTS / env / "backend.tf")["terraform"][0]["backend"][0]['"s3"']
    settings = {key: _value(value) for key, value in backend.items() if not key.startswith("__")}
    bootstrap = {name: _value(body["default"]) for name, body in module_variables(TERRAFORM / "bootstrap").items()}
    assert settings == {
        "bucket": bootstrap["state_bucket"],
        "key": f"{env}/terraform.tfstate",
        "region": bootstrap["region"],
        "dynamodb_table": bootstrap["lock_table"],
    }


# --- security-relevant settings -----------------------------------------------------------------


def test_production_database_is_multi_az_protected_and_encrypted() -> None:
    call = module_block("production", "rds")
    assert call["multi_az"] is True and call["deletion_protection"] is True
    db = resource("rds", "aws_db_instance", "this")
    assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
    assert db["manage_master_user_password"] is True and "password" not in db
    assert db["backup_retention_period"] == "${var.backup_retention_days}"
    assert _value(db["kms_key_id"]) == "${aws_kms_key.this.arn}"


def test_cache_is_encrypted_in_transit_and_at_rest() -> None:
    cache = resource("elasticache", "aws_elasticache_replication_group", "this")
    assert cache["at_rest_encryption_enabled"] is True and cache["transit_encryption_enabled"] is True
    assert _value(cache["transit_encryption_mode"]) == "required"


def test_buckets_are_private_versioned_encrypted_and_expire() -> None:
    block = resource("s3", "aws_s3_bucket_public_access_block", "this")
    assert all(block[key] is True for key in (
        "block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    versioning = resource("s3", "aws_s3_bucket_versioning", "this")
    assert _value(versioning["versioning_configuration"][0]["status"]) == "Enabled"
    sse = resource("s3", "aws_s3_bucket_server_side_encryption_configuration", "this")
    assert _value(sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"]) == "aws:kms"
    lifecycle = resource("s3", "aws_s3_bucket_lifecycle_configuration", "this")["rule"][0]
    assert {"expiration", "noncurrent_version_expiration", "abort_incomplete_multipart_upload"} <= lifecycle.keys()


def test_eks_cluster_is_private_by_default_and_encrypts_secrets() -> None:
    variables = module_variables(MODULES / "eks")
    assert variables["endpoint_public_access"]["default"] is False
    cluster = resource("eks", "aws_eks_cluster", "this")
    assert cluster["vpc_config"][0]["endpoint_private_access"] is True
    assert [_value(r) for r in cluster["encryption_config"][0]["resources"]] == ["secrets"]
    template = resource("eks", "aws_launch_template", "node")
    assert _value(template["metadata_options"][0]["http_tokens"]) == "required"


def policy_documents(module: str = "pipeline_iam") -> dict[str, dict[str, Any]]:
    """The `data "aws_iam_policy_document"` blocks of modules/MODULE/main.tf by name."""
    main = parse_tf(MODULES / module / "main.tf")
    return {_value(label): body for block in main["data"] for kind, named in block.items()
            for label, body in named.items() if _value(kind) == "aws_iam_policy_document"}


def statements(document: dict[str, Any]) -> list[tuple[str, list[str], list[str]]]:
    """(sid, actions, resources) of every statement of a policy document, strings unquoted."""
    out = []
    for statement in document["statement"]:
        resources = statement.get("resources", [])
        resources = resources if isinstance(resources, list) else [resources]
        out.append((_value(statement.get("sid", "")), [_value(a) for a in statement["actions"]],
                    [_value(r) for r in resources]))
    return out


BACKUPS = "${var.backup_bucket_arn}"
READ_ONLY_PREFIXES = ("Get", "List", "Describe", "BatchGet", "BatchCheck")


def test_ci_and_cd_are_separate_roles_each_with_its_own_policy_and_identity() -> None:
    roles = {_value(name): body for block in parse_tf(MODULES / "pipeline_iam" / "main.tf")["resource"]
             for kind, named in block.items() if _value(kind) == "aws_iam_role" for name, body in named.items()}
    assert roles.keys() == {"ci", "cd", "backup"}
    assert _value(roles["ci"]["name"]) == "${var.name}-ci" and _value(roles["cd"]["name"]) == "${var.name}-cd"
    for role in ("ci", "cd", "backup"):
        assert _value(roles[role]["assume_role_policy"]) == f"${{data.aws_iam_policy_document.{role}_trust.json}}"
        attached = resource("pipeline_iam", "aws_iam_role_policy", role)
        assert _value(attached["role"]) == f"${{aws_iam_role.{role}.id}}"
        assert _value(attached["policy"]) == f"${{data.aws_iam_policy_document.{role}.json}}"
    documents = policy_documents()
    for role, account in (("ci", "ci_service_account"), ("cd", "cd_service_account")):
        trust = documents[f"{role}_trust"]["statement"][0]
        assert [_value(a) for a in trust["actions"]] == ["sts:AssumeRoleWithWebIdentity"]
        assert [_value(i) for i in trust["principals"][0]["identifiers"]] == ["${var.eks_oidc_provider_arn}"]
        subject = next(c for c in trust["condition"] if _value(c["variable"]).endswith(":sub"))
        assert [_value(v) for v in subject["values"]] == [f"system:serviceaccount:${{var.{account}}}"]
    # GitHub Actions may assume the CI role (when configured), never the CD role.
    assert "dynamic" in documents["ci_trust"] and "dynamic" not in documents["cd_trust"]
    assert len(documents["cd_trust"]["statement"]) == 1
    # The defaults are the ServiceAccounts of infra/k8s/prefect.
    variables = module_variables(MODULES / "pipeline_iam")
    assert _value(variables["ci_service_account"]["default"]) == "prefect:sunday-ci"
    assert _value(variables["cd_service_account"]["default"]) == "prefect:sunday-release"
    prefect_accounts = {doc["metadata"]["name"] for doc in yaml.safe_load_all(
        (TERRAFORM.parent / "k8s" / "prefect" / "serviceaccount.yaml").read_text(encoding="utf-8"))}
    assert {"sunday-ci", "sunday-release"} <= prefect_accounts


def test_ci_role_has_no_access_to_the_backups() -> None:
    ci = statements(policy_documents()["ci"])
    assert [(sid, r) for sid, _, resources in ci for r in resources if BACKUPS in r] == []
    s3_resources = {r for _, actions, resources in ci if any(a.startswith("s3:") for a in actions) for r in resources}
    assert s3_resources == {"${var.artifacts_bucket_arn}", "${var.artifacts_bucket_arn}/*"}
    assert not any(a.startswith("s3:Delete") for _, actions, _ in ci for a in actions)
    # registry push (and pull) on the project repositories only
    push = next(actions for sid, actions, _ in ci if sid == "EcrPushPull")
    assert {"ecr:PutImage", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
            "ecr:BatchGetImage"} <= set(push)
    assert [r for sid, _, r in ci if sid == "EcrPushPull"] == [["${var.ecr_repository_arns}"]]
    assert not any(a.startswith(("eks:", "ecr:Delete")) for _, actions, _ in ci for a in actions)


def test_cd_role_manages_backups_and_deletes_nothing_else() -> None:
    cd = statements(policy_documents()["cd"])
    deletes = [(actions, resources) for _, actions, resources in cd if any("Delete" in a for a in actions)]
    assert deletes == [(["s3:DeleteObject"], [f"{BACKUPS}/*"])]  # retention, and only of backups
    backup_actions = {a for _, actions, resources in cd if any(BACKUPS in r for r in resources) for a in actions}
    assert backup_actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    # pull only: CD deploys what CI pushed
    ecr = {a for _, actions, _ in cd for a in actions if a.startswith("ecr:")}
    assert ecr == {"ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                   "ecr:DescribeImages", "ecr:GetDownloadUrlForLayer"}
    assert ("DescribeCluster", ["eks:DescribeCluster"], ["${var.eks_cluster_arn}"]) in cd


def test_no_wildcards_and_no_star_resource_for_writes() -> None:
    """Only ecr:GetAuthorizationToken (no resource-level permissions in AWS) may use Resource "*"."""
    documents = policy_documents()
    for name in ("ci", "cd", "backup"):
        for sid, actions, resources in statements(documents[name]):
            assert all("*" not in action for action in actions), (name, sid, actions)
            assert resources, (name, sid)
            if "*" in resources:
                assert actions == ["ecr:GetAuthorizationToken"], (name, sid)
            writes = [a for a in actions if not a.split(":", 1)[1].startswith(READ_ONLY_PREFIXES)]
            if writes:
                assert all(r != "*" and not r.endswith(":*") for r in resources), (name, sid, writes)


def test_both_role_arns_are_outputs_of_the_module_and_every_environment() -> None:
    outputs = {_value(name): body for block in parse_tf(MODULES / "pipeline_iam" / "outputs.tf")["output"]
               for name, body in block.items()}
    assert {"ci_role_arn", "cd_role_arn", "database_backup_role_arn"} == outputs.keys()
    assert _value(outputs["ci_role_arn"]["value"]) == "${aws_iam_role.ci.arn}"
    assert _value(outputs["cd_role_arn"]["value"]) == "${aws_iam_role.cd.arn}"
    for env in ENV_NAMES:
        env_outputs = {_value(name): _value(body["value"]) for block in parse_tf(ENVIRONMENTS / env / "outputs.tf")[
            "output"] for name, body in block.items()}
        assert env_outputs["ci_role_arn"] == "${module.pipeline_iam.ci_role_arn}"
        assert env_outputs["cd_role_arn"] == "${module.pipeline_iam.cd_role_arn}"
        assert "pipeline_role_arn" not in env_outputs  # one role for CI and CD is gone


def test_trivy_config_finds_no_high_or_critical(trivy: Path) -> None:
    assert trivy_config(trivy, TERRAFORM, TRIVYIGNORE) == []


# --- the checks catch broken configurations -----------------------------------------------------


def _write_env(tmp_path: Path, body: str) -> Path:
    env = tmp_path / "environments" / "broken"
    env.mkdir(parents=True)
    main = env / "main.tf"
    main.write_text(body, encoding="utf-8")
    return main


def test_unknown_module_argument_is_reported_with_file_module_and_variable(tmp_path: Path) -> None:
    source = os.path.relpath(MODULES / "s3", tmp_path / "environments" / "broken")
    main = _write_env(tmp_path, f'module "s3" {{\n  source = "{source}"\n  name_prefix = "x"\n  colour = "blue"\n}}\n')
    assert module_call_violations(main) == [f"{main}: module.s3: argument 'colour' is not a variable of {source}"]


def test_missing_required_variable_and_missing_source_are_reported(tmp_path: Path) -> None:
    source = os.path.relpath(MODULES / "s3", tmp_path / "environments" / "broken")
    main = _write_env(tmp_path, (
        f'module "s3" {{\n  source = "{source}"\n}}\n'
        'module "gone" {\n  source = "../../modules/gone"\n}\n'
    ))
    problems = module_call_violations(main)
    assert problems[0] == f"{main}: module.s3: required variable 'name_prefix' of {source} is not passed"
    assert problems[1].startswith(f"{main}: module.gone: source '../../modules/gone' does not exist")
    assert len(problems) == 2


def test_untyped_or_undescribed_variable_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "variables.tf"
    path.write_text('variable "region" {\n  default = "us-east-1"\n}\n', encoding="utf-8")
    assert variable_violations(path) == [
        f"{path}: variable.region.type missing",
        f"{path}: variable.region.description missing",
    ]


def test_trivy_reports_a_public_unencrypted_database(tmp_path: Path, trivy: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'resource "aws_db_instance" "bad" {\n'
        '  engine              = "postgres"\n'
        '  instance_class      = "db.t4g.micro"\n'
        '  storage_encrypted   = false\n'
        '  publicly_accessible = true\n'
        '}\n',
        encoding="utf-8",
    )
    findings = trivy_config(trivy, tmp_path)
    assert any("AWS-0080" in finding and "aws_db_instance.bad" in finding for finding in findings), findings


def test_only_the_cd_role_reads_service_secrets_and_only_those_listed() -> None:
    documents = policy_documents()
    ((kind, statement),) = [item for block in documents["cd"]["dynamic"] for item in block.items()]
    assert _value(kind) == "statement"
    content = statement["content"][0]
    assert _value(content["sid"]) == "ServiceSecretsRead"
    assert [_value(a) for a in content["actions"]] == ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    assert _value(content["resources"]) == "${var.service_secret_arns}"
    assert _value(module_variables(MODULES / "pipeline_iam")["service_secret_arns"]["default"]) == []
    for role in ("ci", "backup"):
        found = [a for _, actions, _ in statements(documents[role]) for a in actions]
        assert not any(a.startswith("secretsmanager:") for a in found), role
