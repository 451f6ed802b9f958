# A bucket that receives logs (S3 access logs, Global Accelerator flow logs): versioned,
# KMS-encrypted, never public, expired after 90 days.

terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

variable "name" {
  type = string
}

variable "kms_key_arn" {
  type = string
}

resource "aws_s3_bucket" "logs" {
  bucket = var.name
  # checkov:skip=CKV_AWS_18:this bucket is itself a log sink; logging it would loop
  # checkov:skip=CKV_AWS_144:logs stay in their region; losing them loses no data
  # checkov:skip=CKV2_AWS_62:nothing reacts to log objects
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
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
