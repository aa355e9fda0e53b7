variable "name" {
  type        = string
  description = "Name prefix, e.g. sunday-production."
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the application and pipeline log groups, in days."
  default     = 30
}

variable "alarm_email" {
  type        = string
  description = "E-mail subscribed to the alarm topic (confirmation needed); null for none."
  default     = null
}

variable "rds_instance_identifier" {
  type        = string
  description = "RDS instance watched by the database alarms; null (staging: PostgreSQL in the cluster) for none."
  default     = null
}

variable "elasticache_replication_group_id" {
  type        = string
  description = "ElastiCache replication group watched by the cache alarms; null for none."
  default     = null
}

variable "rds_free_storage_threshold_bytes" {
  type        = number
  description = "Alarm when the database's free storage falls below this many bytes."
  default     = 5368709120
}

variable "cpu_threshold_percent" {
  type        = number
  description = "Alarm when database or cache CPU stays above this percentage."
  default     = 80
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
