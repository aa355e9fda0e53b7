variable "name" {
  type        = string
  description = "Identifier of the DB instance and prefix of its resources, e.g. sunday-production."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the database."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Database subnets (at least two zones)."
}

variable "allowed_security_group_ids" {
  type        = list(string)
  description = "Security groups allowed to connect on 5432 (the EKS cluster security group)."
}

variable "engine_version" {
  type        = string
  description = "PostgreSQL engine version."
  default     = "15.12"
}

variable "instance_class" {
  type        = string
  description = "DB instance class, e.g. db.t4g.medium."
}

variable "allocated_storage_gb" {
  type        = number
  description = "Initial storage in GiB."
  default     = 20
}

variable "max_allocated_storage_gb" {
  type        = number
  description = "Storage autoscaling ceiling in GiB."
  default     = 100
}

variable "multi_az" {
  type        = bool
  description = "Synchronous standby in a second zone."
  default     = true
}

variable "backup_retention_days" {
  type        = number
  description = "Automated backup (PITR) retention in days (1-35)."
  default     = 7

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the instance (true in production)."
}

variable "database_name" {
  type        = string
  description = "Name of the application database."
  default     = "sunday"
}

variable "master_username" {
  type        = string
  description = "Master user; its password is generated and kept in Secrets Manager by RDS."
  default     = "sunday_admin"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
