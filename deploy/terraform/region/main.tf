# One region of docfold: its Kafka (MSK), state store (Aurora PostgreSQL), object storage
# (S3: the Parquet archive, disaster-recovery snapshots, large projection texts; replicated
# to the peers), regional cache (ElastiCache Redis) and regional projection table.

terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

variable "region" {
  type = string
}

variable "peers" {
  description = "The other regions: their buckets receive this region's objects."
  type        = list(string)
}

variable "network" {
  type = object({
    vpc_id     = string
    subnet_ids = list(string)
    cidr       = string
  })
}

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "kms_account" {
  # checkov:skip=CKV_AWS_111:a key policy's "*" is the key itself: AWS's default key policy (the account administers its key)
  # checkov:skip=CKV_AWS_356:a key policy's "*" is the key itself
  # checkov:skip=CKV_AWS_109:a key policy's "*" is the key itself; only the account's own principals
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
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "docfold" {
  description             = "docfold ${var.region}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms_account.json
}

resource "aws_security_group" "services" {
  name        = "docfold-services"
  description = "Kafka, PostgreSQL and Redis for docfold, reached from the region's VPC only"
  vpc_id      = var.network.vpc_id
  ingress {
    description = "Kafka (TLS, SASL/SCRAM)"
    from_port   = 9096
    to_port     = 9096
    protocol    = "tcp"
    cidr_blocks = [var.network.cidr]
  }
  ingress {
    description = "PostgreSQL"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = [var.network.cidr]
  }
  ingress {
    description = "Redis (TLS)"
    from_port   = 6379
    to_port     = 6379
    protocol    = "tcp"
    cidr_blocks = [var.network.cidr]
  }
  egress {
    description = "answers within the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.network.cidr]
  }
}

resource "aws_cloudwatch_log_group" "docfold" {
  name              = "/docfold/${var.region}"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.docfold.arn
}

# The regional projection table (projection.writer = "region").
resource "aws_dynamodb_table" "projections" {
  name         = "docfold-projections"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "doc_id"
  attribute {
    name = "doc_id"
    type = "S"
  }
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.docfold.arn
  }
}

output "kms_key_arn" {
  value = aws_kms_key.docfold.arn
}
