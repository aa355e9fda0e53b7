output "alarm_topic_arn" {
  description = "SNS topic the alarms publish to (subscribe Slack/PagerDuty integrations here)."
  value       = aws_sns_topic.alarms.arn
}

output "log_group_names" {
  description = "Log group names by purpose (application, pipeline)."
  value       = { for key, group in aws_cloudwatch_log_group.this : key => group.name }
}

output "kms_key_arn" {
  description = "KMS key of the log groups and the alarm topic."
  value       = aws_kms_key.this.arn
}
