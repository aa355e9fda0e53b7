# Staging: VPC, EKS, S3 (artifacts, backups), CloudWatch, the pipeline's IAM roles. PostgreSQL and
# Redis run in the cluster (infra/k8s/staging), so there is no RDS or ElastiCache here.

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}

locals {
  name = "sunday-${var.environment}"
  tags = { Project = "sunday", Environment = var.environment, ManagedBy = "terraform" }
  # The repositories live in production's state; staging only needs their ARNs.
  ecr_repository_arns = [
    for repo in var.ecr_repositories : "arn:aws:ecr:${var.region}:${data.aws_caller_identity.current.account_id}:repository/${repo}"
  ]
}

module "vpc" {
  source             = "../../modules/vpc"
  name               = local.name
  cidr               = var.vpc_cidr
  azs                = var.azs
  single_nat_gateway = true
  tags               = local.tags
}

module "eks" {
  source             = "../../modules/eks"
  name               = local.name
  kubernetes_version = var.kubernetes_version
  vpc_id             = module.vpc.vpc_id
  subnet_ids         = module.vpc.private_subnet_ids
  node_groups        = var.node_groups
  log_retention_days = 30
  tags               = local.tags
}

module "s3" {
  source                = "../../modules/s3"
  name_prefix           = local.name
  backup_retention_days = 14
  force_destroy         = true
  tags                  = local.tags
}

module "monitoring" {
  source             = "../../modules/monitoring"
  name               = local.name
  log_retention_days = 14
  alarm_email        = var.alarm_email
  tags               = local.tags
}

module "pipeline_iam" {
  source                   = "../../modules/pipeline_iam"
  name                     = local.name
  eks_oidc_provider_arn    = module.eks.oidc_provider_arn
  eks_oidc_provider_url    = module.eks.oidc_provider_url
  backup_service_account   = "sunday-staging:database-backup"
  github_oidc_provider_arn = var.github_oidc_provider_arn
  github_subjects          = var.github_subjects
  ecr_repository_arns      = local.ecr_repository_arns
  artifacts_bucket_arn     = module.s3.artifacts_bucket_arn
  backup_bucket_arn        = module.s3.backup_bucket_arn
  s3_kms_key_arn           = module.s3.kms_key_arn
  eks_cluster_arn          = module.eks.cluster_arn
  tags                     = local.tags
}
