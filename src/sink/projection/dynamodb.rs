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

/// A DynamoDB call that failed, classified: worth retrying (throttling, a server fault,
/// no answer) or not (a missing table, a permission, a bad request).
pub(crate) struct Failure {
    pub retryable: bool,
    pub message: String,
}

pub(crate) fn failure<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    error: SdkError<E, R>,
) -> Failure {
    let retryable = match &error {
        SdkError::ServiceError(service) => service.err().code().is_some_and(|code| RETRYABLE.contains(&code)),
        _ => true, // dispatch failures, timeouts, unreadable responses
    };
    let detail = match error.code() {
        Some(code) => format!("{code}: {}", error.message().unwrap_or_default()),
        None => aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string(),
    };
    let hint = if error.code() == Some("ResourceNotFoundException") {
        "; create the table with `docfold setup --config F`"
    } else {
        ""
    };
    Failure { retryable, message: format!("{what}: {detail}{hint}") }
}

fn failed<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
) -> impl FnOnce(SdkError<E, R>) -> SinkError + '_ {
    move |error| failure(what, error).into_sink()
}

impl Failure {
    fn into_sink(self) -> SinkError {
        let Failure { retryable, message } = self;
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

/// A DynamoDB client for `endpoint` (DynamoDB Local) or AWS in `region`.
pub(crate) async fn client(endpoint: Option<&str>, region: Option<String>) -> Client {
    let shared = crate::sink::aws_config(endpoint, region).await;
    let sdk = aws_sdk_dynamodb::config::Builder::from(&shared)
        // Throttling is retried here with backoff and jitter; an outage fails the call
        // within seconds and the caller's own backoff takes over.
        .retry_config(RetryConfig::standard().with_max_attempts(4).with_max_backoff(Duration::from_secs(2)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(15))
                .build(),
        )
        .build();
    Client::from_conf(sdk)
}

/// Creates `table` from `definition` (the shape of `aws dynamodb create-table
/// --cli-input-json`) unless it exists, and waits until it is ACTIVE.
pub(crate) async fn create_table(client: &Client, table: &str, definition: &str) -> Result<(), Failure> {
    let refused = |message: String| Failure { retryable: false, message };
    let definition: TableDefinition =
        serde_json::from_str(definition).map_err(|e| refused(format!("table definition of {table}: {e}")))?;
    let mut create = client.create_table().table_name(table);
    for a in definition.attribute_definitions {
        create = create.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(a.attribute_name)
                .attribute_type(ScalarAttributeType::from(a.attribute_type.as_str()))
                .build()
                .map_err(|e| refused(e.to_string()))?,
        );
    }
    for k in definition.key_schema {
        create = create.key_schema(
            KeySchemaElement::builder()
                .attribute_name(k.attribute_name)
                .key_type(KeyType::from(k.key_type.as_str()))
                .build()
                .map_err(|e| refused(e.to_string()))?,
        );
    }
    match create.billing_mode(BillingMode::from(definition.billing_mode.as_str())).send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => return Ok(()),
        Err(e) => return Err(failure(&format!("creating table {table}"), e)),
    }
    // A new table takes a moment to become ACTIVE on AWS (at once on DynamoDB Local).
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| failure(&format!("describing table {table}"), e))?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Failure { retryable: true, message: format!("table {table} is not ACTIVE after 60 s") })
}

impl DynamoProjections {
    pub async fn open(config: &ProjectionConfig, table: &str) -> DynamoProjections {
        DynamoProjections {
            client: client(config.endpoint.as_deref(), config.aws_region.clone()).await,
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
            .item("generation", AttributeValue::N(item.generation.to_string()))
            .item("chars", AttributeValue::N(item.chars.to_string()))
            .item("updated_ms", AttributeValue::N(item.updated_ms.to_string()))
            .item("region", AttributeValue::S(item.region.clone()))
            .expression_attribute_values(":v", AttributeValue::N(item.version.to_string()))
            .expression_attribute_values(":g", AttributeValue::N(item.generation.to_string()));
        // Only over an older (generation, version); an item from before generations is
        // generation 0.
        let newer = if item.generation == 0 {
            "((attribute_not_exists(generation) OR generation = :g) AND version < :v)"
        } else {
            "(attribute_not_exists(generation) OR generation < :g OR (generation = :g AND version < :v))"
        };
        // The leader's writes to a global table: never over a newer epoch (a deposed
        // leader), never over a version at least as high (a new leader that has not seen
        // every op yet); versions compare across regions (`fold::Doc::version`).
        let put = match item.epoch {
            None => put.condition_expression(format!("attribute_not_exists(doc_id) OR {newer}")),
            Some(epoch) => put
                .item("epoch", AttributeValue::N(epoch.to_string()))
                .condition_expression(format!(
                    "attribute_not_exists(doc_id) OR ({newer} AND (attribute_not_exists(epoch) OR epoch <= :e))"
                ))
                .expression_attribute_values(":e", AttributeValue::N(epoch.to_string())),
        };
        let put = put.send().await;
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
        create_table(&self.client, &self.table, TABLE).await.map_err(Failure::into_sink)
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
            generation: number(item, "generation").map_or(0, |g| g as u64),
            chars: number(item, "chars")? as u64,
            updated_ms: number(item, "updated_ms")?,
            region: string(item, "region").unwrap_or_default(),
            epoch: number(item, "epoch").ok().map(|e| e as u64),
        }))
    }
}
