//! End-to-end tests against the real RabbitMQ and Redis. One binary, a module per theme;
//! every test has its own namespace (see `dtee_tests::TestEnv`).

mod amqp_client;
mod attestation;
mod cli;
mod commit_atomicity;
mod compile;
mod dead_letter;
mod dead_letter_reason;
mod failures;
mod fairness;
mod gpu;
mod gpu_host;
mod hostile;
mod jobs;
mod limits;
mod memory;
mod operability;
mod profiles;
mod resources;
mod result_routing;
mod scale;
mod secrets;
mod shutdown;
mod state;
mod state_snapshot;
mod tenancy;
mod tenant_queues;
