output "state_bucket" {
  description = "Bucket for backend \"s3\" { bucket = … } of every environment."
  value       = aws_s3_bucket.state.id
}

output "lock_table" {
  description = "Table for backend \"s3\" { dynamodb_table = … }."
  value       = aws_dynamodb_table.locks.name
}

output "kms_key_arn" {
  description = "KMS key of the state bucket (backend \"s3\" { kms_key_id = … })."
  value       = aws_kms_key.state.arn
}
