variable "name" {
  type        = string
  description = "Cluster name, e.g. sunday-production (aws eks update-kubeconfig --name NAME)."
}

variable "kubernetes_version" {
  type        = string
  description = "EKS Kubernetes version (the manifests in infra/k8s are validated against it)."
  default     = "1.33"
}

variable "vpc_id" {
  type        = string
  description = "VPC of the cluster."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the control plane ENIs and the nodes (one per zone)."
}

variable "endpoint_public_access" {
  type        = bool
  description = "Expose the API server endpoint on the internet (restricted to public_access_cidrs). Off: reach it from inside the VPC (VPN, SSM bastion)."
  default     = false
}

variable "public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach a public API endpoint (only with endpoint_public_access)."
  default     = []
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
  description = "Managed node groups by name."
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the control plane log group, in days."
  default     = 90
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
