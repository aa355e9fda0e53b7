variable "name" {
  type        = string
  description = "Replication group id and prefix of its resources, e.g. sunday-production."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the cache."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Database subnets (at least two zones)."
}

variable "allowed_security_group_ids" {
  type        = list(string)
  description = "Security groups allowed to connect on 6379 (the EKS cluster security group)."
}

variable "node_type" {
  type        = string
  description = "Cache node type, e.g. cache.t4g.small."
}

variable "num_cache_clusters" {
  type        = number
  description = "Nodes in the replication group (1 primary + replicas); 2 or more enables automatic failover."
  default     = 2
}

variable "engine_version" {
  type        = string
  description = "Redis engine version."
  default     = "7.1"
}

variable "snapshot_retention_days" {
  type        = number
  description = "Days automatic snapshots are kept."
  default     = 7
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
