variable "name" {
  type        = string
  description = "Name prefix of the roles, e.g. sunday-production (roles NAME-pipeline, NAME-database-backup)."
}

variable "eks_oidc_provider_arn" {
  type        = string
  description = "ARN of the cluster's IAM OIDC provider (IRSA)."
}

variable "eks_oidc_provider_url" {
  type        = string
  description = "Issuer of the cluster's OIDC provider without https://."
}

variable "pipeline_service_account" {
  type        = string
  description = "NAMESPACE:NAME of the ServiceAccount the Prefect flow-run jobs use (infra/k8s/prefect)."
  default     = "prefect:sunday-release"
}

variable "backup_service_account" {
  type        = string
  description = "NAMESPACE:NAME of the database-backup CronJob's ServiceAccount."
}

variable "github_oidc_provider_arn" {
  type        = string
  description = "ARN of the token.actions.githubusercontent.com OIDC provider; null: the role is assumable from EKS only."
  default     = null
}

variable "github_subjects" {
  type        = list(string)
  description = "GitHub OIDC subjects allowed to assume the pipeline role, e.g. [\"repo:sunday/sunday:ref:refs/heads/main\"]."
  default     = []
}

variable "ecr_repository_arns" {
  type        = list(string)
  description = "ECR repositories the pipeline pushes to."
}

variable "artifacts_bucket_arn" {
  type        = string
  description = "Bucket of pipeline artifacts and Prefect results (read/write)."
}

variable "backup_bucket_arn" {
  type        = string
  description = "Bucket of database backups."
}

variable "s3_kms_key_arn" {
  type        = string
  description = "KMS key of both buckets."
}

variable "eks_cluster_arn" {
  type        = string
  description = "Cluster the pipeline may describe (aws eks update-kubeconfig)."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
