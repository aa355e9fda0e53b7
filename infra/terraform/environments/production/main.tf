# Production: VPC (NAT per zone), EKS, RDS PostgreSQL (Multi-AZ, deletion protection), ElastiCache
# Redis, S3 (artifacts, backups), ECR repositories, CloudWatch alarms, the pipeline's IAM roles.

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  name = "sunday-${var.environment}"
  tags = { Project = "sunday", Environment = var.environment, ManagedBy = "terraform" }
}

module "vpc" {
  source             = "../../modules/vpc"
  name               = local.name
  cidr               = var.vpc_cidr
  azs                = var.azs
  single_nat_gateway = false
  tags               = local.tags
}

module "eks" {
  source                 = "../../modules/eks"
  name                   = local.name
  kubernetes_version     = var.kubernetes_version
  vpc_id                 = module.vpc.vpc_id
  subnet_ids             = module.vpc.private_subnet_ids
  node_groups            = var.node_groups
  endpoint_public_access = length(var.eks_public_access_cidrs) > 0
  public_access_cidrs    = var.eks_public_access_cidrs
  log_retention_days     = 90
  tags                   = local.tags
}

module "rds" {
  source                     = "../../modules/rds"
  name                       = local.name
  vpc_id                     = module.vpc.vpc_id
  subnet_ids                 = module.vpc.database_subnet_ids
  allowed_security_group_ids = [module.eks.cluster_security_group_id]
  instance_class             = var.db_instance_class
  allocated_storage_gb       = var.db_allocated_storage_gb
  multi_az                   = true
  backup_retention_days      = var.db_backup_retention_days
  deletion_protection        = true
  tags                       = local.tags
}

module "elasticache" {
  source                     = "../../modules/elasticache"
  name                       = local.name
  vpc_id                     = module.vpc.vpc_id
  subnet_ids                 = module.vpc.database_subnet_ids
  allowed_security_group_ids = [module.eks.cluster_security_group_id]
  node_type                  = var.cache_node_type
  num_cache_clusters         = 2
  tags                       = local.tags
}

module "s3" {
  source                = "../../modules/s3"
  name_prefix           = local.name
  backup_retention_days = 35
  force_destroy         = false
  tags                  = local.tags
}

module "ecr" {
  source       = "../../modules/ecr"
  repositories = var.ecr_repositories
  tags         = local.tags
}

module "monitoring" {
  source                           = "../../modules/monitoring"
  name                             = local.name
  log_retention_days               = 90
  alarm_email                      = var.alarm_email
  rds_instance_identifier          = module.rds.instance_identifier
  elasticache_replication_group_id = module.elasticache.replication_group_id
  tags                             = local.tags
}

module "pipeline_iam" {
  source                   = "../../modules/pipeline_iam"
  name                     = local.name
  eks_oidc_provider_arn    = module.eks.oidc_provider_arn
  eks_oidc_provider_url    = module.eks.oidc_provider_url
  backup_service_account   = "sunday-production:database-backup"
  github_oidc_provider_arn = var.github_oidc_provider_arn
  github_subjects          = var.github_subjects
  ecr_repository_arns      = module.ecr.repository_arns
  artifacts_bucket_arn     = module.s3.artifacts_bucket_arn
  backup_bucket_arn        = module.s3.backup_bucket_arn
  s3_kms_key_arn           = module.s3.kms_key_arn
  eks_cluster_arn          = module.eks.cluster_arn
  tags                     = local.tags
}
