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

variable "ci_service_account" {
  type        = string
  description = "NAMESPACE:NAME of the ServiceAccount of CI flow-run jobs (work pool sunday-ci, infra/k8s/prefect)."
  default     = "prefect:sunday-ci"
}

variable "cd_service_account" {
  type        = string
  description = "NAMESPACE:NAME of the ServiceAccount of CD flow-run jobs (work pool sunday-deploy, infra/k8s/prefect)."
  default     = "prefect:sunday-release"
}

variable "backup_service_account" {
  type        = string
  description = "NAMESPACE:NAME of the database-backup CronJob's ServiceAccount."
}

variable "github_oidc_provider_arn" {
  type        = string
  description = "ARN of the token.actions.githubusercontent.com OIDC provider; null: the CI role is assumable from EKS only."
  default     = null
}

variable "github_subjects" {
  type        = list(string)
  description = "GitHub OIDC subjects allowed to assume the CI role (never the CD role), e.g. [\"repo:sunday/sunday:ref:refs/heads/main\"]."
  default     = []
}

variable "ecr_repository_arns" {
  type        = list(string)
  description = "ECR repositories CI pushes to and CD pulls from."
}

variable "artifacts_bucket_arn" {
  type        = string
  description = "Bucket of pipeline artifacts and Prefect results (read/write)."
}

variable "backup_bucket_arn" {
  type        = string
  description = "Bucket of database backups (CD and the backup CronJob only, never CI)."
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

variable "service_secret_arns" {
  type        = list(string)
  description = "ARNs of the AWS Secrets Manager secrets the services' `secrets:` name (aws-sm://NAME): the CD role reads only these."
  default     = []
}
