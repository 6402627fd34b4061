//! The status line `dtee run` and `dtee wait` keep on a terminal while they wait.

use std::time::Duration;

use dtee_schemas::Digest;

/// Awaits `waiting`; meanwhile, when stderr is a terminal, keeps one status line there with the
/// elapsed time (cleared when the result arrives). Nothing is printed when stderr is not a
/// terminal, so scripts see only the result.
pub async fn with_progress<T>(id: &Digest, waiting: impl std::future::Future<Output = T>) -> T {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return waiting.await;
    }
    let started = std::time::Instant::now();
    // Nothing for a result that comes within the first quarter second.
    let period = Duration::from_millis(250);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(waiting);
    let outcome = loop {
        tokio::select! {
            outcome = &mut waiting => break outcome,
            _ = ticker.tick() => {
                let short = &id.as_str()[..id.as_str().len().min(19)];
                eprint!(
                    "\r\x1b[2Kwaiting for {short}… {:.1} s (submitted; no result yet)",
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        }
    };
    eprint!("\r\x1b[2K");
    let _ = std::io::stderr().flush();
    outcome
}
