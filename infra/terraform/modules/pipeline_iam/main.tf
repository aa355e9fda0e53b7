# Three IAM roles assumed through OIDC, each with only what its job needs:
# - NAME-ci: CI (Prefect work pool sunday-ci, ServiceAccount prefect/sunday-ci via IRSA; optionally
#   GitHub Actions via GitHub OIDC): push and pull the listed ECR repositories, read/write the
#   artifacts bucket. No access to the backups bucket at all: CI runs code of any pushed branch and
#   must not be able to read a production dump.
# - NAME-cd: CD (work pool sunday-deploy, ServiceAccount prefect/sunday-release via IRSA only):
#   pull images, the artifacts bucket, the backups bucket (list, read, write, and DeleteObject for the
#   retention of tasks/backup.py; no DeleteObjectVersion: the bucket is versioned, so a deleted
#   backup stays recoverable until the lifecycle rule expires it), describe the cluster.
# - NAME-database-backup: the database-backup CronJob: write backups under postgres/ in the bucket.
# Only ecr:GetAuthorizationToken (no resource-level permissions in AWS) uses Resource "*".

data "aws_iam_policy_document" "ci_trust" {
  statement {
    sid     = "PrefectCiJobsInEks"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:sub"
      values   = ["system:serviceaccount:${var.ci_service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = var.github_oidc_provider_arn == null ? [] : [var.github_oidc_provider_arn]
    content {
      sid     = "GitHubActions"
      actions = ["sts:AssumeRoleWithWebIdentity"]
      principals {
        type        = "Federated"
        identifiers = [statement.value]
      }
      condition {
        test     = "StringEquals"
        variable = "token.actions.githubusercontent.com:aud"
        values   = ["sts.amazonaws.com"]
      }
      condition {
        test     = "StringEquals"
        variable = "token.actions.githubusercontent.com:sub"
        values   = var.github_subjects
      }
    }
  }
}

resource "aws_iam_role" "ci" {
  name                 = "${var.name}-ci"
  assume_role_policy   = data.aws_iam_policy_document.ci_trust.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "ci" {
  # docker login: ecr:GetAuthorizationToken supports no resource-level permission, AWS requires "*".
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "EcrPushPull"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = var.ecr_repository_arns
  }

  statement {
    sid       = "ArtifactsList"
    actions   = ["s3:ListBucket"]
    resources = [var.artifacts_bucket_arn]
  }

  statement {
    sid       = "ArtifactsReadWrite"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.artifacts_bucket_arn}/*"]
  }

  statement {
    sid       = "ArtifactsKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.s3_kms_key_arn]
  }
}

resource "aws_iam_role_policy" "ci" {
  name   = "sunday-release-ci"
  role   = aws_iam_role.ci.id
  policy = data.aws_iam_policy_document.ci.json
}


data "aws_iam_policy_document" "cd_trust" {
  statement {
    sid     = "PrefectCdJobsInEks"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:sub"
      values   = ["system:serviceaccount:${var.cd_service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cd" {
  name                 = "${var.name}-cd"
  assume_role_policy   = data.aws_iam_policy_document.cd_trust.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "cd" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "EcrPull"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.ecr_repository_arns
  }

  statement {
    sid       = "ArtifactsList"
    actions   = ["s3:ListBucket"]
    resources = [var.artifacts_bucket_arn]
  }

  statement {
    sid       = "ArtifactsReadWrite"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.artifacts_bucket_arn}/*"]
  }

  statement {
    sid       = "BackupsList"
    actions   = ["s3:ListBucket"]
    resources = [var.backup_bucket_arn]
  }

  statement {
    sid       = "BackupsReadWrite"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.backup_bucket_arn}/*"]
  }

  # Retention (keep the newest N backups): a delete marker on the versioned bucket.
  statement {
    sid       = "BackupsRetention"
    actions   = ["s3:DeleteObject"]
    resources = ["${var.backup_bucket_arn}/*"]
  }

  statement {
    sid       = "BucketsKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.s3_kms_key_arn]
  }

  statement {
    sid       = "DescribeCluster"
    actions   = ["eks:DescribeCluster"]
    resources = [var.eks_cluster_arn]
  }

  # The services' `secrets:` (aws-sm://NAME): CD reads the listed secrets at deploy time, nothing else
  dynamic "statement" {
    for_each = length(var.service_secret_arns) > 0 ? [1] : []
    content {
      sid       = "ServiceSecretsRead"
      actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
      resources = var.service_secret_arns
    }
  }
}

resource "aws_iam_role_policy" "cd" {
  name   = "sunday-release-cd"
  role   = aws_iam_role.cd.id
  policy = data.aws_iam_policy_document.cd.json
}


data "aws_iam_policy_document" "backup_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:sub"
      values   = ["system:serviceaccount:${var.backup_service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "backup" {
  name               = "${var.name}-database-backup"
  assume_role_policy = data.aws_iam_policy_document.backup_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "backup" {
  statement {
    sid       = "WriteBackups"
    actions   = ["s3:PutObject"]
    resources = ["${var.backup_bucket_arn}/postgres/*"]
  }

  statement {
    sid       = "BucketKey"
    actions   = ["kms:GenerateDataKey"]
    resources = [var.s3_kms_key_arn]
  }
}

resource "aws_iam_role_policy" "backup" {
  name   = "database-backup"
  role   = aws_iam_role.backup.id
  policy = data.aws_iam_policy_document.backup.json
}
