# The state store (Aurora PostgreSQL: snapshots and checkpoints in one transaction) and the
# regional cache (ElastiCache Redis, TLS).

variable "redis_auth_token" {
  description = "The cache's AUTH token (invalidations.redis = \"rediss://:TOKEN@…\")."
  type        = string
  sensitive   = true
  default     = null
}

resource "aws_db_subnet_group" "docfold" {
  name       = "docfold-${var.region}"
  subnet_ids = var.network.subnet_ids
}

resource "aws_rds_cluster_parameter_group" "docfold" {
  name   = "docfold-${var.region}"
  family = "aurora-postgresql16"
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
}

resource "aws_rds_cluster" "state" {
  # checkov:skip=CKV2_AWS_8:Aurora's continuous backups (14 days, to any point in time) and docfold's disaster-recovery snapshots in S3, replicated to the peers, are the backups
  # checkov:skip=CKV2_AWS_27:logging every statement would log the checkpoint writer's whole load; statements over 1 s are logged (log_min_duration_statement)
  cluster_identifier                  = "docfold-state-${var.region}"
  engine                              = "aurora-postgresql"
  engine_version                      = "16.4"
  database_name                       = "docfold"
  master_username                     = "docfold"
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = aws_kms_key.docfold.arn
  db_subnet_group_name                = aws_db_subnet_group.docfold.name
  db_cluster_parameter_group_name     = aws_rds_cluster_parameter_group.docfold.name
  vpc_security_group_ids              = [aws_security_group.services.id]
  storage_encrypted                   = true
  kms_key_id                          = aws_kms_key.docfold.arn
  iam_database_authentication_enabled = true
  deletion_protection                 = true
  backup_retention_period             = 14
  copy_tags_to_snapshot               = true
  enabled_cloudwatch_logs_exports     = ["postgresql"]
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "docfold-state-${var.region}-final"
}

resource "aws_iam_role" "rds_monitoring" {
  name = "docfold-rds-monitoring-${var.region}"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "monitoring.rds.amazonaws.com" } }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_rds_cluster_instance" "state" {
  count                                 = 2
  identifier                            = "docfold-state-${var.region}-${count.index}"
  cluster_identifier                    = aws_rds_cluster.state.id
  engine                                = aws_rds_cluster.state.engine
  engine_version                        = aws_rds_cluster.state.engine_version
  instance_class                        = "db.r7g.large"
  db_subnet_group_name                  = aws_db_subnet_group.docfold.name
  auto_minor_version_upgrade            = true
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.docfold.arn
  monitoring_interval                   = 30
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  publicly_accessible                   = false
}

resource "aws_elasticache_subnet_group" "docfold" {
  name       = "docfold-${var.region}"
  subnet_ids = var.network.subnet_ids
}

resource "aws_elasticache_replication_group" "cache" {
  replication_group_id       = "docfold-${var.region}"
  description                = "docfold regional cache of document texts"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = "cache.r7g.large"
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.docfold.name
  security_group_ids         = [aws_security_group.services.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.docfold.arn
  transit_encryption_enabled = true
  auth_token                 = var.redis_auth_token
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
}
