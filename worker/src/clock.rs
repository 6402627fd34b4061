//! Wall-clock time as the protocol records it.

pub(crate) use dtee_schemas::run::unix_ms;
