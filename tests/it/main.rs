//! docfold's integration tests: one binary, one module per area.

mod cli;
mod codec;
mod log;
mod lseq_props;
mod services;
mod store;
mod traces;
