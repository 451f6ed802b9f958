//! The configured lease store, by URL: `sqlite://PATH` or `postgres://…` (the `region_leases`
//! table beside the state) or `dynamodb://TABLE`.

use super::dynamodb::DynamoLeases;
use super::lease::{Lease, LeaseError, LeaseStore, Replaced};
use crate::config::{RegionConfig, redact_url};
use crate::store::Store;

pub enum Leases {
    Sql(Store),
    DynamoDb(DynamoLeases),
}

impl Leases {
    /// The lease store `[region]` names.
    pub async fn of(config: &RegionConfig) -> Result<Leases, LeaseError> {
        let opened = Leases::open(
            config.leases.expose(),
            config.leases_endpoint.as_deref(),
            config.aws_region.clone(),
        )
        .await;
        opened.map_err(|error| {
            let named = |message| format!("{message} (the setting region.leases of region {})", config.name);
            match error {
                LeaseError::Unavailable(message) => LeaseError::Unavailable(named(message)),
                LeaseError::Refused(message) => LeaseError::Refused(named(message)),
            }
        })
    }

    /// Opens the store at `url`; DynamoDB takes an endpoint override (DynamoDB Local) and
    /// an AWS region, and its table is created unless it exists.
    pub async fn open(
        url: &str,
        endpoint: Option<&str>,
        aws_region: Option<String>,
    ) -> Result<Leases, LeaseError> {
        match url.strip_prefix("dynamodb://") {
            Some(table) if !table.is_empty() => {
                let leases = DynamoLeases::open(table, endpoint, aws_region).await;
                leases.create().await?;
                Ok(Leases::DynamoDb(leases))
            }
            Some(_) => Err(LeaseError::Refused("lease store URL dynamodb:// names no table".into())),
            None => Store::open(url).await.map(Leases::Sql).map_err(|e| {
                let message = format!("lease store {}: {e}", redact_url(url));
                if e.is_retryable() { LeaseError::Unavailable(message) } else { LeaseError::Refused(message) }
            }),
        }
    }
}

impl LeaseStore for Leases {
    async fn read(&self, scope: &str) -> Result<Option<Lease>, LeaseError> {
        match self {
            Leases::Sql(store) => store.read(scope).await,
            Leases::DynamoDb(table) => table.read(scope).await,
        }
    }

    async fn replace(
        &self,
        scope: &str,
        expected: Option<&Lease>,
        new: &Lease,
    ) -> Result<Replaced, LeaseError> {
        match self {
            Leases::Sql(store) => store.replace(scope, expected, new).await,
            Leases::DynamoDb(table) => table.replace(scope, expected, new).await,
        }
    }
}
