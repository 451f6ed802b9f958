//! The lease store in DynamoDB (`dynamodb://TABLE`, `schemas/dynamodb/leases.json`): one
//! item per scope, compare-and-set as a `PutItem` conditioned on the whole expected item
//! (or on its absence), reads strongly consistent. A global table is not a lease store
//! (its replication is last-writer-wins): the table lives in one region.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use super::lease::{Lease, LeaseError, LeaseStore, Replaced};
use crate::sink::projection::dynamodb::{Failure, client, create_table, failure};

const TABLE: &str = include_str!("../../schemas/dynamodb/leases.json");

pub struct DynamoLeases {
    client: Client,
    table: String,
}

impl From<Failure> for LeaseError {
    fn from(Failure { retryable, message }: Failure) -> LeaseError {
        if retryable { LeaseError::Unavailable(message) } else { LeaseError::Refused(message) }
    }
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<i64, LeaseError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LeaseError::Refused(format!("lease item has no number {name:?}")))
}

impl DynamoLeases {
    pub async fn open(table: &str, endpoint: Option<&str>, aws_region: Option<String>) -> DynamoLeases {
        DynamoLeases { client: client(endpoint, aws_region).await, table: table.into() }
    }

    /// Creates the table unless it exists.
    pub async fn create(&self) -> Result<(), LeaseError> {
        Ok(create_table(&self.client, &self.table, TABLE).await?)
    }
}

impl LeaseStore for DynamoLeases {
    async fn read(&self, scope: &str) -> Result<Option<Lease>, LeaseError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("scope", AttributeValue::S(scope.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failure(&format!("reading lease {scope:?} from table {}", self.table), e))?;
        let Some(item) = got.item() else { return Ok(None) };
        let holder = item.get("holder").and_then(|v| v.as_s().ok()).cloned();
        let holder = holder.ok_or_else(|| LeaseError::Refused("lease item has no holder".into()))?;
        let epoch = u64::try_from(number(item, "epoch")?)
            .map_err(|_| LeaseError::Refused("lease epoch is negative".into()))?;
        Ok(Some(Lease { holder, epoch, expires_ms: number(item, "expires_ms")? }))
    }

    async fn replace(
        &self,
        scope: &str,
        expected: Option<&Lease>,
        new: &Lease,
    ) -> Result<Replaced, LeaseError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("scope", AttributeValue::S(scope.into()))
            .item("holder", AttributeValue::S(new.holder.clone()))
            .item("epoch", AttributeValue::N(new.epoch.to_string()))
            .item("expires_ms", AttributeValue::N(new.expires_ms.to_string()));
        let put = match expected {
            None => put
                .condition_expression("attribute_not_exists(#scope)")
                .expression_attribute_names("#scope", "scope"),
            Some(old) => put
                .condition_expression("holder = :holder AND epoch = :epoch AND expires_ms = :expires")
                .expression_attribute_values(":holder", AttributeValue::S(old.holder.clone()))
                .expression_attribute_values(":epoch", AttributeValue::N(old.epoch.to_string()))
                .expression_attribute_values(":expires", AttributeValue::N(old.expires_ms.to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(Replaced::Written),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                Ok(Replaced::Conflict(self.read(scope).await?))
            }
            Err(e) => Err(failure(&format!("writing lease {scope:?} to table {}", self.table), e).into()),
        }
    }
}
