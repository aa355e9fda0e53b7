output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets, one per zone."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets (EKS nodes), one per zone."
  value       = aws_subnet.private[*].id
}

output "database_subnet_ids" {
  description = "Database subnets (RDS, ElastiCache), one per zone."
  value       = aws_subnet.database[*].id
}

output "database_subnet_cidrs" {
  description = "CIDRs of the database subnets (the production NetworkPolicy allows egress to them)."
  value       = aws_subnet.database[*].cidr_block
}
