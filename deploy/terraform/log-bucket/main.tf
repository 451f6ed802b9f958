# A bucket that receives logs (S3 access logs, Global Accelerator flow logs): versioned,
# encrypted (SSE-S3), never public, expired after 90 days.

terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

variable "name" {
  type = string
}

resource "aws_s3_bucket" "logs" {
  bucket = var.name
  # checkov:skip=CKV_AWS_18:this bucket is itself a log sink; logging it would loop
  # checkov:skip=CKV_AWS_144:logs stay in their region; losing them loses no data
  # checkov:skip=CKV2_AWS_62:nothing reacts to log objects
  # checkov:skip=CKV_AWS_145:S3 server access logs are delivered only to SSE-S3 buckets (see below)
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

# S3 server access logs are delivered only to buckets encrypted with S3-managed keys
# (SSE-S3): a KMS default encryption would make S3 drop them.
resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    id     = "expire"
    status = "Enabled"
    filter {}
    expiration {
      days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

output "id" {
  value = aws_s3_bucket.logs.id
}
