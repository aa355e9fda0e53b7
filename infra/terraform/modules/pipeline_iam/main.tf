# Two IAM roles assumed through OIDC, each with only what its job needs:
# - NAME-pipeline: the release pipeline (Prefect flow-run jobs via IRSA; optionally GitHub Actions
#   via GitHub OIDC): push images to the listed ECR repositories, read/write the artifacts and
#   backup buckets, describe the cluster.
# - NAME-database-backup: the database-backup CronJob: write backups under postgres/ in the bucket.

data "aws_iam_policy_document" "pipeline_trust" {
  statement {
    sid     = "PrefectJobsInEks"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_provider_url}:sub"
      values   = ["system:serviceaccount:${var.pipeline_service_account}"]
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

resource "aws_iam_role" "pipeline" {
  name                 = "${var.name}-pipeline"
  assume_role_policy   = data.aws_iam_policy_document.pipeline_trust.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "pipeline" {
  # docker login: ecr:GetAuthorizationToken supports no resource-level permission, AWS requires "*".
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "EcrPush"
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
    sid       = "BucketsList"
    actions   = ["s3:ListBucket"]
    resources = [var.artifacts_bucket_arn, var.backup_bucket_arn]
  }

  statement {
    sid       = "BucketsReadWrite"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.artifacts_bucket_arn}/*", "${var.backup_bucket_arn}/*"]
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
}

resource "aws_iam_role_policy" "pipeline" {
  name   = "sunday-release"
  role   = aws_iam_role.pipeline.id
  policy = data.aws_iam_policy_document.pipeline.json
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
