variable "name_prefix" {
  type        = string
  description = "Bucket name prefix: buckets are PREFIX-artifacts and PREFIX-db-backups (e.g. sunday-production-db-backups, the BACKUP_BUCKET of the k8s overlay)."
}

variable "backup_retention_days" {
  type        = number
  description = "Days a database backup is kept before it expires."
  default     = 35
}

variable "backup_archive_after_days" {
  type        = number
  description = "Days after which backups move to Glacier Instant Retrieval."
  default     = 30
}

variable "artifact_retention_days" {
  type        = number
  description = "Days a pipeline artifact (reports, Prefect results) is kept."
  default     = 90
}

variable "noncurrent_version_retention_days" {
  type        = number
  description = "Days an overwritten or deleted object version is kept."
  default     = 30
}

variable "force_destroy" {
  type        = bool
  description = "Allow terraform destroy to delete non-empty buckets (never in production)."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
