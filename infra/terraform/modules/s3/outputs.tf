output "artifacts_bucket" {
  description = "Name of the artifacts bucket (Prefect result storage, reports)."
  value       = aws_s3_bucket.this["artifacts"].id
}

output "artifacts_bucket_arn" {
  description = "ARN of the artifacts bucket."
  value       = aws_s3_bucket.this["artifacts"].arn
}

output "backup_bucket" {
  description = "Name of the database backup bucket (BACKUP_BUCKET of the k8s overlay)."
  value       = aws_s3_bucket.this["db-backups"].id
}

output "backup_bucket_arn" {
  description = "ARN of the database backup bucket."
  value       = aws_s3_bucket.this["db-backups"].arn
}

output "kms_key_arn" {
  description = "KMS key encrypting both buckets (writers need kms:GenerateDataKey on it)."
  value       = aws_kms_key.this.arn
}
