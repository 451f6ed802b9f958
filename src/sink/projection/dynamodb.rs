//! Projections in DynamoDB (`dynamodb://TABLE`): one item per document, written with
//! `PutItem` under the condition `attribute_not_exists(doc_id) OR version < :v`. The SDK
//! retries throttling with exponential backoff and jitter; the pipeline retries whole
//! flushes when DynamoDB stays unreachable. The table is `schemas/dynamodb/projections.json`.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableStatus,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

use super::{Body, Projection, ProjectionStore, Written};
use crate::config::ProjectionConfig;
use crate::sink::SinkError;

/// The table definition, in the shape of `aws dynamodb create-table --cli-input-json`.
const TABLE: &str = include_str!("../../../schemas/dynamodb/projections.json");

pub struct DynamoProjections {
    client: Client,
    table: String,
    concurrency: usize,
}

/// Error codes worth retrying (throttling and server faults).
const RETRYABLE: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingException",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
];

fn failed<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
) -> impl FnOnce(SdkError<E, R>) -> SinkError {
    let what = what.to_string();
    move |error| {
        let retryable = match &error {
            SdkError::ServiceError(service) => {
                service.err().code().is_some_and(|code| RETRYABLE.contains(&code))
            }
            _ => true, // dispatch failures, timeouts, unreadable responses
        };
        let detail = match error.code() {
            Some(code) => format!("{code}: {}", error.message().unwrap_or_default()),
            None => aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string(),
        };
        let hint = if error.code() == Some("ResourceNotFoundException") {
            "; create the table with `docfold projections create`"
        } else {
            ""
        };
        let message = format!("{what}: {detail}{hint}");
        if retryable {
            SinkError::Unavailable { sink: "projections", message }
        } else {
            SinkError::Refused { sink: "projections", message }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TableDefinition {
    attribute_definitions: Vec<Attribute>,
    key_schema: Vec<KeyElement>,
    billing_mode: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attribute {
    attribute_name: String,
    attribute_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyElement {
    attribute_name: String,
    key_type: String,
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<i64, SinkError> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).ok_or_else(|| {
        SinkError::Corrupt { sink: "projections", message: format!("item has no number {name:?}") }
    })
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

impl DynamoProjections {
    pub async fn open(config: &ProjectionConfig, table: &str) -> DynamoProjections {
        let shared = crate::sink::aws_config(config.endpoint.as_deref(), config.region.clone()).await;
        let sdk = aws_sdk_dynamodb::config::Builder::from(&shared)
            // Throttling is retried here with backoff and jitter; an outage fails the flush
            // within seconds and the pipeline's own backoff takes over.
            .retry_config(
                RetryConfig::standard().with_max_attempts(4).with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(15))
                    .build(),
            )
            .build();
        DynamoProjections {
            client: Client::from_conf(sdk),
            table: table.into(),
            concurrency: config.concurrency,
        }
    }

    async fn put_one(&self, item: &Projection) -> Result<bool, SinkError> {
        let (name, value) = match &item.body {
            Body::Text(text) => ("text", text),
            Body::Pointer(key) => ("text_ref", key),
        };
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("doc_id", AttributeValue::S(item.doc_id.clone()))
            .item(name, AttributeValue::S(value.clone()))
            .item("version", AttributeValue::N(item.version.to_string()))
            .item("chars", AttributeValue::N(item.chars.to_string()))
            .item("updated_ms", AttributeValue::N(item.updated_ms.to_string()))
            .item("region", AttributeValue::S(item.region.clone()))
            .condition_expression("attribute_not_exists(doc_id) OR version < :v")
            .expression_attribute_values(":v", AttributeValue::N(item.version.to_string()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                Ok(false)
            }
            Err(e) => Err(failed(&format!("writing document {:?} to table {}", item.doc_id, self.table))(e)),
        }
    }
}

impl ProjectionStore for DynamoProjections {
    async fn create(&self) -> Result<(), SinkError> {
        let definition: TableDefinition = serde_json::from_str(TABLE)
            .map_err(|e| SinkError::Config(format!("schemas/dynamodb/projections.json: {e}")))?;
        let mut create = self.client.create_table().table_name(&self.table);
        for a in definition.attribute_definitions {
            create = create.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(a.attribute_name)
                    .attribute_type(ScalarAttributeType::from(a.attribute_type.as_str()))
                    .build()
                    .map_err(|e| SinkError::Config(e.to_string()))?,
            );
        }
        for k in definition.key_schema {
            create = create.key_schema(
                KeySchemaElement::builder()
                    .attribute_name(k.attribute_name)
                    .key_type(KeyType::from(k.key_type.as_str()))
                    .build()
                    .map_err(|e| SinkError::Config(e.to_string()))?,
            );
        }
        let created = create.billing_mode(BillingMode::from(definition.billing_mode.as_str())).send().await;
        match created {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => return Ok(()),
            Err(e) => return Err(failed(&format!("creating table {}", self.table))(e)),
        }
        // A new table takes a moment to become ACTIVE on AWS (at once on DynamoDB Local).
        for _ in 0..120 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(failed(&format!("describing table {}", self.table)))?;
            if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(SinkError::Unavailable {
            sink: "projections",
            message: format!("table {} is not ACTIVE after 60 s", self.table),
        })
    }

    async fn put(&self, items: &[Projection]) -> Result<Written, SinkError> {
        let mut outcome = Written::default();
        for chunk in items.chunks(self.concurrency) {
            for wrote in futures::future::join_all(chunk.iter().map(|item| self.put_one(item))).await {
                if wrote? {
                    outcome.written += 1;
                } else {
                    outcome.stale += 1;
                }
            }
        }
        Ok(outcome)
    }

    async fn get(&self, doc_id: &str) -> Result<Option<Projection>, SinkError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("doc_id", AttributeValue::S(doc_id.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(failed(&format!("reading document {doc_id:?} from table {}", self.table)))?;
        let Some(item) = got.item() else { return Ok(None) };
        let body = Body::stored(doc_id, string(item, "text"), string(item, "text_ref"))?;
        Ok(Some(Projection {
            doc_id: doc_id.into(),
            body,
            version: number(item, "version")? as u64,
            chars: number(item, "chars")? as u64,
            updated_ms: number(item, "updated_ms")?,
            region: string(item, "region").unwrap_or_default(),
        }))
    }
}
