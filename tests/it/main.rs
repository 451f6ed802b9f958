//! docfold's integration tests: one binary, one module per area.

mod active_active;
mod cli;
mod codec;
mod fold;
mod global_table;
mod homes;
mod jobs;
mod link;
mod log;
mod lseq_props;
mod mirror;
mod outage;
mod pipeline;
mod region;
mod regions;
mod residency;
mod secrets;
mod services;
mod sim;
mod sinks;
mod sources;
mod spine;
mod store;
mod tls;
mod traces;
mod world;
