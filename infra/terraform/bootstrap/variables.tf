variable "region" {
  type        = string
  description = "Region of the state bucket and the lock table."
  default     = "us-east-1"
}

variable "state_bucket" {
  type        = string
  description = "Name of the S3 bucket holding the Terraform state of every environment."
  default     = "sunday-terraform-state"
}

variable "lock_table" {
  type        = string
  description = "Name of the DynamoDB table holding the state locks."
  default     = "sunday-terraform-locks"
}
