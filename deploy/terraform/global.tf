# What spans the regions: DynamoDB global tables (the leader's projection table and the
# region leases), and the Global Accelerator in front of the regions' editor endpoints.

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
  # Each replica is encrypted with its own region's key (the region module's).
  server_side_encryption {
    enabled     = true
    kms_key_arn = module.eu_west_1.kms_key_arn
  }
  replica {
    region_name = "us-east-1"
    kms_key_arn = module.us_east_1.kms_key_arn
  }
  replica {
    region_name = "ap-southeast-1"
    kms_key_arn = module.ap_southeast_1.kms_key_arn
  }
}

module "accelerator_logs" {
  source    = "./log-bucket"
  providers = { aws = aws.eu_west_1 }
  name      = "docfold-accelerator-flow-logs"
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
