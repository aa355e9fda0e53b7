output "pipeline_role_arn" {
  description = "Role of the release pipeline (annotate ServiceAccount prefect/sunday-release with it)."
  value       = aws_iam_role.pipeline.arn
}

output "database_backup_role_arn" {
  description = "Role of the database-backup CronJob (annotation of its ServiceAccount in the overlay)."
  value       = aws_iam_role.backup.arn
}
