//! Turns every patch of a trace into real ops through `Replica::local_edit`: one replica
//! for a sequential trace; for a concurrent one, one replica per agent, brought up to
//! each txn's `parents` before its patches are applied.

use crate::lseq::{EditError, MAX_EDIT_CHARS, MAX_EDIT_DELETES, Op, Replica, SiteId, splitmix64};

use super::Trace;

/// The ops of a trace, in an order where every op follows the ops it was made on.
#[derive(Debug, Clone)]
pub struct TraceOps {
    pub doc_seed: u64,
    pub ops: Vec<Op>,
    /// Concurrent traces: replicas rebuilt because an agent's history was not contained
    /// in a txn's parents.
    pub forks: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("txn {txn}, patch {patch}: {error}")]
    Edit { txn: usize, patch: usize, error: EditError },
    #[error("txn {txn} names parent {parent}, which is not an earlier txn")]
    BadParent { txn: usize, parent: usize },
    #[error("txn {txn} names agent {agent}, but the trace has only {txns} txns")]
    BadAgent { txn: usize, agent: usize, txns: usize },
    #[error("txn {txn}: a replica did not accept an op: {reason}")]
    Apply { txn: usize, reason: String },
}

/// Replays `trace` with allocation seed `doc_seed`.
pub fn replay(trace: &Trace, doc_seed: u64) -> Result<TraceOps, ReplayError> {
    if trace.is_concurrent() {
        replay_concurrent(trace, doc_seed)
    } else {
        replay_sequential(trace, doc_seed)
    }
}

fn site_of(agent: usize, generation: usize) -> SiteId {
    splitmix64(((agent as u64) << 32) | generation as u64)
}

fn edit_all(replica: &mut Replica, trace: &Trace, txn: usize, ops: &mut Vec<Op>) -> Result<(), ReplayError> {
    for (patch, p) in trace.txns[txn].patches.iter().enumerate() {
        let fail = |error| ReplayError::Edit { txn, patch, error };
        split_edit(replica, p.0, p.1, &p.2, ops).map_err(fail)?;
    }
    Ok(())
}

/// Makes one patch as ops within the per-op limits: deletes first, then text in chunks.
fn split_edit(
    replica: &mut Replica,
    pos: usize,
    delete: usize,
    text: &str,
    ops: &mut Vec<Op>,
) -> Result<(), EditError> {
    if delete <= MAX_EDIT_DELETES && text.chars().count() <= MAX_EDIT_CHARS {
        ops.push(replica.local_edit(pos, delete, text)?);
        return Ok(());
    }
    let mut left = delete;
    while left > 0 {
        let now = left.min(MAX_EDIT_DELETES);
        ops.push(replica.local_edit(pos, now, "")?);
        left -= now;
    }
    let chars: Vec<char> = text.chars().collect();
    for (i, chunk) in chars.chunks(MAX_EDIT_CHARS).enumerate() {
        ops.push(replica.local_edit(pos + i * MAX_EDIT_CHARS, 0, &chunk.iter().collect::<String>())?);
    }
    Ok(())
}

fn replay_sequential(trace: &Trace, doc_seed: u64) -> Result<TraceOps, ReplayError> {
    let mut replica = Replica::new(doc_seed, site_of(0, 0));
    let mut ops = Vec::with_capacity(trace.patch_count() + 1);
    if !trace.start_content.is_empty() {
        split_edit(&mut replica, 0, 0, &trace.start_content, &mut ops)
            .map_err(|error| ReplayError::Edit { txn: 0, patch: 0, error })?;
    }
    for txn in 0..trace.txns.len() {
        edit_all(&mut replica, trace, txn, &mut ops)?;
    }
    Ok(TraceOps { doc_seed, ops, forks: 0 })
}

/// One agent's replica and which txns it holds.
struct Agent {
    replica: Replica,
    generation: usize,
    applied: Vec<bool>,
    /// Applied txns with no applied descendant.
    heads: Vec<usize>,
}

fn replay_concurrent(trace: &Trace, doc_seed: u64) -> Result<TraceOps, ReplayError> {
    let n = trace.txns.len();
    let mut agents: Vec<Agent> = Vec::new();
    // Ops of txn i are ops[ranges[i].0 .. ranges[i].1].
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(n);
    let mut ops: Vec<Op> = Vec::with_capacity(trace.patch_count());
    let mut forks = 0;
    for (t, txn) in trace.txns.iter().enumerate() {
        let parents = txn.parents.as_deref().unwrap_or(&[]);
        if let Some(&parent) = parents.iter().find(|&&p| p >= t) {
            return Err(ReplayError::BadParent { txn: t, parent });
        }
        if txn.agent >= n {
            return Err(ReplayError::BadAgent { txn: t, agent: txn.agent, txns: n });
        }
        while agents.len() <= txn.agent {
            let id = agents.len();
            agents.push(Agent {
                replica: Replica::new(doc_seed, site_of(id, 0)),
                generation: 0,
                applied: vec![false; n],
                heads: vec![],
            });
        }
        let agent = &mut agents[txn.agent];
        let (missing, reached) = missing_ancestors(trace, parents, &agent.applied);
        let mut missing = missing;
        if !agent.heads.iter().all(|h| reached.contains(h)) {
            // The agent holds txns outside this txn's history: start a fresh session.
            forks += 1;
            agent.generation += 1;
            agent.replica = Replica::new(doc_seed, site_of(txn.agent, agent.generation));
            agent.applied.iter_mut().for_each(|a| *a = false);
            missing = missing_ancestors(trace, parents, &agent.applied).0;
        }
        missing.sort_unstable();
        for &m in &missing {
            for op in &ops[ranges[m].0..ranges[m].1] {
                agent.replica.apply(op).map_err(|e| ReplayError::Apply { txn: t, reason: e.to_string() })?;
            }
            agent.applied[m] = true;
        }
        let start = ops.len();
        edit_all(&mut agent.replica, trace, t, &mut ops)?;
        ranges.push((start, ops.len()));
        agent.applied[t] = true;
        agent.heads = vec![t];
    }
    Ok(TraceOps { doc_seed, ops, forks })
}

/// Ancestors of `parents` (inclusive) not in `applied`, and the applied txns met at the
/// border of that search.
fn missing_ancestors(trace: &Trace, parents: &[usize], applied: &[bool]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = std::collections::HashSet::new();
    let (mut missing, mut reached) = (Vec::new(), Vec::new());
    let mut stack: Vec<usize> = parents.to_vec();
    while let Some(t) = stack.pop() {
        if !seen.insert(t) {
            continue;
        }
        if applied[t] {
            reached.push(t);
        } else {
            missing.push(t);
            stack.extend(trace.txns[t].parents.as_deref().unwrap_or(&[]));
        }
    }
    (missing, reached)
}
