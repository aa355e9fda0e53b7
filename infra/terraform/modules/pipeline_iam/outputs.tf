output "ci_role_arn" {
  description = "Role of CI (annotate ServiceAccount prefect/sunday-ci with it; GitHub Actions assume it too)."
  value       = aws_iam_role.ci.arn
}

output "cd_role_arn" {
  description = "Role of CD (annotate ServiceAccount prefect/sunday-release with it)."
  value       = aws_iam_role.cd.arn
}

output "database_backup_role_arn" {
  description = "Role of the database-backup CronJob (annotation of its ServiceAccount in the overlay)."
  value       = aws_iam_role.backup.arn
}
