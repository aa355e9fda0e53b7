variable "region" {
  type        = string
  description = "AWS region of the environment."
}

variable "environment" {
  type        = string
  description = "Environment name; resources are named sunday-ENVIRONMENT."
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR of the environment's VPC (a /16)."
}

variable "azs" {
  type        = list(string)
  description = "Availability zones used (2 or 3)."
}

variable "kubernetes_version" {
  type        = string
  description = "EKS version."
}

variable "node_groups" {
  type = map(object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    capacity_type  = optional(string, "ON_DEMAND")
    disk_size_gb   = optional(number, 50)
    labels         = optional(map(string), {})
  }))
  description = "EKS managed node groups."
}

variable "ecr_repositories" {
  type        = list(string)
  description = "ECR repositories created here and pushed to by the pipeline (staging pulls from them too)."
  default     = ["sunday/backend", "sunday/frontend"]
}

variable "github_oidc_provider_arn" {
  type        = string
  description = "GitHub Actions OIDC provider allowed to assume the pipeline role; null for none."
  default     = null
}

variable "github_subjects" {
  type        = list(string)
  description = "GitHub OIDC subjects allowed to assume the pipeline role."
  default     = []
}

variable "alarm_email" {
  type        = string
  description = "E-mail subscribed to the alarm topic; null for none."
  default     = null
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class."
}

variable "db_allocated_storage_gb" {
  type        = number
  description = "Initial RDS storage in GiB."
}

variable "db_backup_retention_days" {
  type        = number
  description = "RDS automated backup retention in days."
}

variable "cache_node_type" {
  type        = string
  description = "ElastiCache node type."
}

variable "eks_public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the EKS API endpoint from the internet; empty keeps the endpoint private."
  default     = []
}
