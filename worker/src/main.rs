//! `dtee-worker`: parses configuration, sets up logging, and serves until SIGTERM or SIGINT.

use std::process::ExitCode;

use dtee_worker::config::Config;

fn main() -> ExitCode {
    // The worker compiles kernels by running itself with this hidden first argument.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|arg| arg.to_str())
        == Some(dtee_worker::backend::wasm::COMPILE_SUBCOMMAND)
    {
        return dtee_worker::backend::wasm::compiler_main(&args[2..]);
    }
    let config = match Config::parse_from(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dtee-worker: {error}");
            return ExitCode::from(64);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTEE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dtee-worker: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        // Install the handlers before anything else: a SIGTERM during start-up must start a
        // graceful shutdown, not kill the process.
        let shutdown = shutdown_signal()?;
        dtee_worker::run(config, shutdown).await
    });
    // Kernels still running after the grace period were abandoned, and their deliveries are
    // back in the queue: do not wait for their threads.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dtee-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
