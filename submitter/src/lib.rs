//! The dtee client library, used by the `dtee` command line, the load generator and the tests.
//!
//! - [`Client`] stores blobs, submits jobs with publisher confirms, and waits for results;
//! - [`ResultWaiter`] waits for many results on one queue without missing any;
//! - [`builder`] turns command-line style arguments into a job spec.
//!
//! Waiting is race-free: a waiter binds its queue to the job id *before* it looks in the Redis
//! result cache, and workers cache a result *before* they publish it. Either the result is
//! published after the binding (and arrives on the queue), or it was cached before the look-up.
#![forbid(unsafe_code)]

pub mod builder;
mod client;
pub mod secrets;
mod waiter;

pub use client::{Client, ClientConfig, ClientError, PreparedJob, DEFAULT_NACK_RETRIES};
pub use waiter::{is_republished, ResultWaiter, Watch};
