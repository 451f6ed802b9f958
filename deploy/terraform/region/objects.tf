# Object storage: the Parquet archive (ops/…), disaster-recovery snapshots (snapshots/…)
# and projection texts too large for an item (projections/…). Replicated to every peer's
# bucket (docfold-<peer>), so a region that loses its own restores from a copy.

resource "aws_s3_bucket" "objects" {
  bucket = "docfold-${var.region}"
  # checkov:skip=CKV2_AWS_62:nothing reacts to new objects; readers (DuckDB, Athena) list them
}

module "access_logs" {
  source = "../log-bucket"
  name   = "docfold-${var.region}-access-logs"
}

resource "aws_s3_bucket_logging" "objects" {
  bucket        = aws_s3_bucket.objects.id
  target_bucket = module.access_logs.id
  target_prefix = "objects/"
}

resource "aws_s3_bucket_versioning" "objects" {
  bucket = aws_s3_bucket.objects.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "objects" {
  bucket = aws_s3_bucket.objects.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.docfold.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "objects" {
  bucket                  = aws_s3_bucket.objects.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# The archive and the snapshots are kept; old versions (an object rewritten) go after 30
# days, and uploads that never finished after 7.
resource "aws_s3_bucket_lifecycle_configuration" "objects" {
  bucket = aws_s3_bucket.objects.id
  rule {
    id     = "old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_iam_role" "replication" {
  name = "docfold-replication-${var.region}"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "s3.amazonaws.com" } }]
  })
}

resource "aws_iam_role_policy" "replication" {
  name = "replicate-to-peers"
  role = aws_iam_role.replication.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["s3:GetReplicationConfiguration", "s3:ListBucket"]
        Resource = [aws_s3_bucket.objects.arn]
      },
      {
        Effect   = "Allow"
        Action   = ["s3:GetObjectVersionForReplication", "s3:GetObjectVersionAcl", "s3:GetObjectVersionTagging"]
        Resource = ["${aws_s3_bucket.objects.arn}/*"]
      },
      {
        Effect   = "Allow"
        Action   = ["s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"]
        Resource = [for peer in var.peers : "arn:aws:s3:::docfold-${peer}/*"]
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
        Resource = ["*"]
      },
    ]
  })
}

resource "aws_s3_bucket_replication_configuration" "objects" {
  depends_on = [aws_s3_bucket_versioning.objects]
  bucket     = aws_s3_bucket.objects.id
  role       = aws_iam_role.replication.arn
  dynamic "rule" {
    for_each = var.peers
    content {
      id       = "to-${rule.value}"
      priority = rule.key
      status   = "Enabled"
      filter {}
      delete_marker_replication {
        status = "Enabled"
      }
      source_selection_criteria {
        sse_kms_encrypted_objects {
          status = "Enabled"
        }
      }
      destination {
        bucket        = "arn:aws:s3:::docfold-${rule.value}"
        storage_class = "STANDARD_IA"
        encryption_configuration {
          replica_kms_key_id = "alias/docfold"
        }
      }
    }
  }
}

resource "aws_kms_alias" "docfold" {
  name          = "alias/docfold"
  target_key_id = aws_kms_key.docfold.key_id
}
