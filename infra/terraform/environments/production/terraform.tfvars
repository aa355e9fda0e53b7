region             = "us-east-1"
environment        = "production"
vpc_cidr           = "10.20.0.0/16" # database subnets 10.20.20.0/24-10.20.22.0/24 (infra/k8s/production NetworkPolicies)
azs                = ["us-east-1a", "us-east-1b", "us-east-1c"]
kubernetes_version = "1.33"

node_groups = {
  general = {
    instance_types = ["m6i.large", "m5.large"]
    min_size       = 3
    max_size       = 9
    desired_size   = 3
  }
}

db_instance_class        = "db.m6g.large"
db_allocated_storage_gb  = 100
db_backup_retention_days = 14
cache_node_type          = "cache.m6g.large"
