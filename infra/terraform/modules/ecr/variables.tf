variable "repositories" {
  type        = list(string)
  description = "Repository names, e.g. [\"sunday/backend\", \"sunday/frontend\"]."
}

variable "keep_images" {
  type        = number
  description = "Images kept per repository (older ones expire); rollback targets must stay within this window."
  default     = 50
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
