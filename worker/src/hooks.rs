//! Points where the test suite can stop or break a worker. Compiled in only with the cargo
//! feature `test-hooks` (the test crate enables it; release builds of the worker do not): in a
//! build without it, no hook can be set, and each check below is a constant `false`.

use crate::config::Config;
pub use crate::config::TestHook;

/// Whether `hook` is set.
#[cfg(feature = "test-hooks")]
pub(crate) fn active(config: &Config, hook: TestHook) -> bool {
    config.test_hook == Some(hook)
}

/// Whether `hook` is set: never, in a build without test hooks.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn active(_config: &Config, _hook: TestHook) -> bool {
    false
}

/// With the `pause-after-commit` hook, blocks for ever right after a state commit, before the
/// result is cached, published and acked (the test then kills the process).
pub(crate) async fn pause_after_commit(config: &Config, job_id: &dtee_schemas::Digest) {
    if active(config, TestHook::PauseAfterCommit) {
        eprintln!("dtee-test-hook: paused after commit of {job_id}");
        std::future::pending::<()>().await;
    }
}
