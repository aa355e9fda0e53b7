output "repository_arns" {
  description = "ARNs of the repositories."
  value       = [for repo in aws_ecr_repository.this : repo.arn]
}

output "repository_urls" {
  description = "Repository URLs by name (REGISTRY/sunday/SERVICE)."
  value       = { for name, repo in aws_ecr_repository.this : name => repo.repository_url }
}

output "kms_key_arn" {
  description = "KMS key encrypting the repositories."
  value       = aws_kms_key.this.arn
}
