//! The role machine on the wall clock and a real lease store: `docfold run` keeps its
//! region's role with this loop (renewing the lease as leader, watching it as standby,
//! taking it on expiry when `auto_failover`). The decisions are all in `role` and `lease`.

use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease::{Claim, LeaseStore, claim};
use super::leases::Leases;
use super::role::{Change, Request, RoleMachine, poll_interval_ms};
use crate::store::now_ms;

/// Keeps this region's role until `cancel`; a leader releases its lease on the way out
/// (a planned stop hands over at once instead of after the ttl). `view` starts with the
/// region's machine (`RoleMachine::new`) and gets it after every step, for the gate in
/// front of the region's log (`RoleMachine::admit`).
pub async fn keep_role(
    leases: Leases,
    scope: String,
    view: watch::Sender<RoleMachine>,
    cancel: CancellationToken,
) {
    let mut machine = view.borrow().clone();
    let settings = machine.settings().clone();
    let region = settings.region.clone();
    let tick = Duration::from_millis(u64::try_from(poll_interval_ms(settings.ttl_ms)).unwrap_or(1_000));
    loop {
        let now = now_ms();
        let (request, change) = machine.poll(now);
        report(&region, change.as_ref());
        let change = match request {
            Some(Request::Claim(c)) => match claim(&leases, &scope, &region, c, settings.times(now)).await {
                Ok(answer) => machine.on_answer(answer),
                Err(error) => {
                    tracing::warn!(%region, %error, "lease store: no answer; keeping the role until the lease runs out");
                    None
                }
            },
            Some(Request::Read) => match leases.read(&scope).await {
                Ok(lease) => machine.on_read(lease),
                Err(error) => {
                    tracing::warn!(%region, %error, "lease store: no answer");
                    None
                }
            },
            None => None,
        };
        report(&region, change.as_ref());
        let held = machine.lease().filter(|_| machine.epoch().is_some());
        let remaining_ms = held.map_or(0, |lease| lease.expires_ms - now_ms());
        crate::telemetry::region_lease_remaining(&region, remaining_ms as f64 / 1000.0);
        view.send_replace(machine.clone());
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(tick) => {}
        }
    }
    if let Some(epoch) = machine.epoch() {
        let released =
            claim(&leases, &scope, &region, Claim::Release { epoch }, settings.times(now_ms())).await;
        match released {
            Ok(_) => tracing::info!(%region, epoch, "released the region lease"),
            Err(error) => {
                tracing::warn!(%region, epoch, %error, "could not release the region lease; it runs out by itself")
            }
        }
    }
}

fn report(region: &str, change: Option<&Change>) {
    match change {
        Some(Change::Promoted { epoch }) => {
            tracing::info!(event = "lead", region, epoch, "this region leads: it holds the lease");
            crate::telemetry::region_role(region, Some(*epoch));
        }
        Some(Change::Demoted { epoch, reason }) => {
            tracing::warn!(event = "step_down", region, epoch, reason, "this region stepped down");
            crate::telemetry::region_role(region, None);
        }
        None => {}
    }
}
