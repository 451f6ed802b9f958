# What spans the regions: DynamoDB global tables (the leader's projection table and the
# region leases), and the Global Accelerator in front of the regions' editor endpoints.

resource "aws_kms_key" "global_tables" {
  provider                = aws.eu_west_1
  description             = "docfold global tables"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  multi_region            = true
  policy                  = data.aws_iam_policy_document.kms_account.json
}

data "aws_caller_identity" "current" {
  provider = aws.eu_west_1
}

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
}

resource "aws_kms_replica_key" "global_tables" {
  for_each = {
    "us-east-1"      = "us_east_1"
    "ap-southeast-1" = "ap_southeast_1"
  }
  provider                = aws.us_east_1
  primary_key_arn         = aws_kms_key.global_tables.arn
  deletion_window_in_days = 30
  description             = "docfold global tables (${each.key})"
}

# Two global tables, keyed by their hash key: the projection table of projection.writer =
# "leader" (every region reads it; only the lease holder writes), and the leadership lease of
# each job (region.lease = "dynamodb://docfold-leases").
resource "aws_dynamodb_table" "global" {
  for_each = {
    "docfold-projections-global" = "doc_id"
    "docfold-leases"             = "scope"
  }
  provider         = aws.eu_west_1
  name             = each.key
  billing_mode     = "PAY_PER_REQUEST"
  hash_key         = each.value
  stream_enabled   = true
  stream_view_type = "NEW_AND_OLD_IMAGES"
  attribute {
    name = each.value
    type = "S"
  }
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.global_tables.arn
  }
  replica {
    region_name = "us-east-1"
    kms_key_arn = aws_kms_replica_key.global_tables["us-east-1"].arn
  }
  replica {
    region_name = "ap-southeast-1"
    kms_key_arn = aws_kms_replica_key.global_tables["ap-southeast-1"].arn
  }
}

module "accelerator_logs" {
  source      = "./log-bucket"
  providers   = { aws = aws.eu_west_1 }
  name        = "docfold-accelerator-flow-logs"
  kms_key_arn = aws_kms_key.global_tables.arn
}

resource "aws_globalaccelerator_accelerator" "editors" {
  provider        = aws.us_east_1
  name            = "docfold-editors"
  ip_address_type = "IPV4"
  enabled         = true
  attributes {
    flow_logs_enabled   = true
    flow_logs_s3_bucket = module.accelerator_logs.id
    flow_logs_s3_prefix = "flow-logs/"
  }
}

resource "aws_globalaccelerator_listener" "editors" {
  provider        = aws.us_east_1
  accelerator_arn = aws_globalaccelerator_accelerator.editors.id
  protocol        = "TCP"
  port_range {
    from_port = 443
    to_port   = 443
  }
}

# A region whose health check fails (its editors' API answers /health with 503 when the
# region does not take writes) gets no new editors; the others take them.
resource "aws_globalaccelerator_endpoint_group" "region" {
  for_each                      = var.jobs_endpoints
  provider                      = aws.us_east_1
  listener_arn                  = aws_globalaccelerator_listener.editors.id
  endpoint_group_region         = each.key
  health_check_protocol         = "HTTPS"
  health_check_port             = 443
  health_check_path             = "/health"
  health_check_interval_seconds = 10
  threshold_count               = 3
  endpoint_configuration {
    endpoint_id                    = each.value
    weight                         = 100
    client_ip_preservation_enabled = true
  }
}
