# CloudWatch side of monitoring: KMS-encrypted log groups with retention, an encrypted SNS topic
# for alarms, and alarms on the managed data stores. (Application alerts are Prometheus rules in
# infra/k8s/monitoring.)

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

data "aws_iam_policy_document" "key" {
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogsUse"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
  statement {
    sid       = "CloudWatchAlarmsPublishToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "this" {
  description         = "${var.name} logs and alarm topic"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.key.json
  tags                = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  for_each          = toset(["application", "pipeline"])
  name              = "/sunday/${var.name}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == null ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  rds_alarm_specs = {
    rds-cpu = {
      namespace  = "AWS/RDS"
      metric     = "CPUUtilization"
      dimensions = { DBInstanceIdentifier = var.rds_instance_identifier }
      comparison = "GreaterThanThreshold"
      threshold  = var.cpu_threshold_percent
      statistic  = "Average"
      text       = "Database CPU above ${var.cpu_threshold_percent}% for 15 minutes"
    }
    rds-free-storage = {
      namespace  = "AWS/RDS"
      metric     = "FreeStorageSpace"
      dimensions = { DBInstanceIdentifier = var.rds_instance_identifier }
      comparison = "LessThanThreshold"
      threshold  = var.rds_free_storage_threshold_bytes
      statistic  = "Minimum"
      text       = "Database free storage low"
    }
    rds-connections = {
      namespace  = "AWS/RDS"
      metric     = "DatabaseConnections"
      dimensions = { DBInstanceIdentifier = var.rds_instance_identifier }
      comparison = "GreaterThanThreshold"
      threshold  = 400
      statistic  = "Maximum"
      text       = "Database connections above 400"
    }
  }
  redis_alarm_specs = {
    redis-cpu = {
      namespace  = "AWS/ElastiCache"
      metric     = "EngineCPUUtilization"
      dimensions = { ReplicationGroupId = var.elasticache_replication_group_id }
      comparison = "GreaterThanThreshold"
      threshold  = var.cpu_threshold_percent
      statistic  = "Average"
      text       = "Redis engine CPU above ${var.cpu_threshold_percent}% for 15 minutes"
    }
    redis-memory = {
      namespace  = "AWS/ElastiCache"
      metric     = "DatabaseMemoryUsagePercentage"
      dimensions = { ReplicationGroupId = var.elasticache_replication_group_id }
      comparison = "GreaterThanThreshold"
      threshold  = 85
      statistic  = "Maximum"
      text       = "Redis memory above 85%"
    }
  }
  # Only the alarms of the data stores this environment has (staging runs them in the cluster).
  alarms = merge(
    { for key, spec in local.rds_alarm_specs : key => spec if var.rds_instance_identifier != null },
    { for key, spec in local.redis_alarm_specs : key => spec if var.elasticache_replication_group_id != null },
  )
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each            = local.alarms
  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.text
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  comparison_operator = each.value.comparison
  threshold           = each.value.threshold
  statistic           = each.value.statistic
  period              = 300
  evaluation_periods  = 3
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}
