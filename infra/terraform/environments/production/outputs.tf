output "cluster_name" {
  description = "EKS cluster (aws eks update-kubeconfig --name …)."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "EKS API server endpoint."
  value       = module.eks.cluster_endpoint
}

output "ci_role_arn" {
  description = "CI role: annotate ServiceAccount prefect/sunday-ci with eks.amazonaws.com/role-arn = this."
  value       = module.pipeline_iam.ci_role_arn
}

output "cd_role_arn" {
  description = "CD role: annotate ServiceAccount prefect/sunday-release with eks.amazonaws.com/role-arn = this."
  value       = module.pipeline_iam.cd_role_arn
}

output "database_backup_role_arn" {
  description = "eks.amazonaws.com/role-arn of ServiceAccount database-backup in the k8s overlay."
  value       = module.pipeline_iam.database_backup_role_arn
}

output "artifacts_bucket" {
  description = "Bucket for Prefect result storage and reports."
  value       = module.s3.artifacts_bucket
}

output "backup_bucket" {
  description = "BACKUP_BUCKET of the k8s overlay."
  value       = module.s3.backup_bucket
}

output "database_subnet_cidrs" {
  description = "Database subnets (egress target of the production NetworkPolicies)."
  value       = module.vpc.database_subnet_cidrs
}

output "alarm_topic_arn" {
  description = "SNS topic of the CloudWatch alarms."
  value       = module.monitoring.alarm_topic_arn
}

output "rds_address" {
  description = "Host of DATABASE_URL (Secret backend-database)."
  value       = module.rds.address
}

output "rds_master_user_secret_arn" {
  description = "Secrets Manager secret with the RDS master credentials."
  value       = module.rds.master_user_secret_arn
}

output "redis_endpoint" {
  description = "ElastiCache primary endpoint (TLS: rediss://)."
  value       = module.elasticache.primary_endpoint_address
}

output "ecr_repository_urls" {
  description = "REGISTRY/sunday/SERVICE repositories."
  value       = module.ecr.repository_urls
}
