//! docfold's integration tests: one binary, one module per area.

mod cli;
mod codec;
mod lseq_props;
mod traces;
