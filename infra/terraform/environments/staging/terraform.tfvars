region             = "us-east-1"
environment        = "staging"
vpc_cidr           = "10.10.0.0/16"
azs                = ["us-east-1a", "us-east-1b"]
kubernetes_version = "1.33"

node_groups = {
  general = {
    instance_types = ["t3.large"]
    min_size       = 2
    max_size       = 4
    desired_size   = 2
  }
}
