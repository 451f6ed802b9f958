# The region's log: doc-ops (keyed by document id), the peers' mirrored topics, the
# invalidations and dead-letter topics (`docfold setup` creates them).

resource "aws_msk_configuration" "docfold" {
  name           = "docfold-${var.region}"
  kafka_versions = ["3.7.x"]
  # LogAppendTime: `docfold doc at --time` and `replay --from TIME` search timestamps that
  # only grow. Three replicas, two in sync: an acked op survives a broker.
  server_properties = <<-PROPERTIES
    log.message.timestamp.type=LogAppendTime
    default.replication.factor=3
    min.insync.replicas=2
    unclean.leader.election.enable=false
    auto.create.topics.enable=false
  PROPERTIES
}

resource "aws_msk_cluster" "docfold" {
  cluster_name           = "docfold-${var.region}"
  kafka_version          = "3.7.x"
  number_of_broker_nodes = 3
  enhanced_monitoring    = "PER_TOPIC_PER_PARTITION"
  broker_node_group_info {
    instance_type   = "kafka.m7g.large"
    client_subnets  = var.network.subnet_ids
    security_groups = [aws_security_group.services.id]
    storage_info {
      ebs_storage_info {
        volume_size = 1000
      }
    }
    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }
  configuration_info {
    arn      = aws_msk_configuration.docfold.arn
    revision = aws_msk_configuration.docfold.latest_revision
  }
  # SASL/SCRAM over TLS (port 9096): docfold's librdkafka takes `sasl.username` and
  # `sasl.password` in `[log.kafka]` (the password is hidden in logs and errors).
  client_authentication {
    sasl {
      scram = true
    }
  }
  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.docfold.arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }
  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.docfold.name
      }
    }
  }
}
