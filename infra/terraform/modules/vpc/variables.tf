variable "name" {
  type        = string
  description = "Name prefix of every resource, e.g. sunday-production."
}

variable "cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC (a /16). Public subnets take x.y.0-2.0/24, database subnets x.y.20-22.0/24, private subnets x.y.64.0/20 upwards."
}

variable "azs" {
  type        = list(string)
  description = "Availability zones, one subnet of each tier per zone (2 or 3)."

  validation {
    condition     = length(var.azs) >= 2 && length(var.azs) <= 3
    error_message = "Give 2 or 3 availability zones."
  }
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway for all zones (cheaper, staging) instead of one per zone (production)."
  default     = false
}

variable "flow_log_retention_days" {
  type        = number
  description = "Retention of the VPC flow log group, in days."
  default     = 30
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
