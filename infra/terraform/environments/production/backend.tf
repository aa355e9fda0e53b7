# Remote state: S3 bucket + DynamoDB lock table, both created once by infra/terraform/bootstrap.
# The bucket encrypts the state with its default SSE-KMS key (no `encrypt = true` here: that
# would request SSE-S3 instead). Each environment has its own key, so a plan of one never locks
# or reads the other.
terraform {
  backend "s3" {
    bucket         = "sunday-terraform-state"
    key            = "production/terraform.tfstate"
    region         = "us-east-1"
    dynamodb_table = "sunday-terraform-locks"
  }
}
