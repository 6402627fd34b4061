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
    // And drives each GPU in a child process started this way.
    if args.get(1).and_then(|arg| arg.to_str())
        == Some(dtee_worker::backend::gpu::host::DEVICE_HOST_COMMAND)
    {
        return device_host_main(&args[2..]);
    }
    match args.get(1).and_then(|arg| arg.to_str()) {
        Some("doctor") => return doctor(&args[2..]),
        Some("exec") => return exec(&args[2..]),
        _ => {}
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
    // Half the cores by default: the runtime's threads run the jobs' tasks and lapin's I/O
    // loops (third_party/lapin) and hand kernels to threads of their own; on 2 cores one
    // runtime thread spent less CPU per trivial job than two (README, "Performance").
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads)
        .enable_all()
        .build()
    {
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

/// `dtee-worker __dtee-device-host --driver <cuda|hip|stand-in> --device N`: one GPU's host.
fn device_host_main(args: &[std::ffi::OsString]) -> ExitCode {
    use dtee_worker::backend::gpu::device::{self, DriverKind};
    let args: Vec<&str> = args.iter().filter_map(|arg| arg.to_str()).collect();
    let (kind, ordinal) = match args.as_slice() {
        ["--driver", driver, "--device", ordinal] => {
            match (DriverKind::parse(driver), ordinal.parse::<u32>()) {
                (Some(kind), Ok(ordinal)) => (kind, ordinal),
                _ => {
                    eprintln!("dtee-worker device host: bad arguments {args:?}");
                    return ExitCode::from(64);
                }
            }
        }
        _ => {
            eprintln!("dtee-worker device host: usage: --driver <cuda|hip|stand-in> --device N");
            return ExitCode::from(64);
        }
    };
    match device::serve(kind, ordinal) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dtee-worker device host: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `dtee-worker doctor [--json]`: what this machine can do (SEV-SNP, TPM, GPUs, wasm). Always
/// exits 0 when it could look.
fn doctor(args: &[std::ffi::OsString]) -> ExitCode {
    let json = match args
        .iter()
        .map(|a| a.to_str())
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => false,
        [Some("--json")] => true,
        _ => {
            eprintln!("usage: dtee-worker doctor [--json]");
            return ExitCode::from(64);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dtee-worker: {error}");
            return ExitCode::from(64);
        }
    };
    let report = dtee_worker::tools::doctor_report(&config);
    if json {
        println!("{report:#}");
    } else {
        print!("{}", dtee_worker::tools::doctor_text(&report));
    }
    ExitCode::SUCCESS
}

/// `dtee-worker exec JOB.json... [--blobs DIR] [--repeat N]`: runs jobs without a broker and
/// prints their signed results (and, with `--repeat`, the median and p99 of N more runs on stderr).
/// Exit status: 0 succeeded, 1 the job failed, 64 usage, 2 exec could not run it.
fn exec(args: &[std::ffi::OsString]) -> ExitCode {
    const USAGE: &str = "usage: dtee-worker exec JOB.json... [--blobs DIR] [--repeat N]";
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let (mut jobs, mut blobs, mut repeat) = (Vec::new(), None, 0usize);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--blobs" => blobs = rest.next().map(std::path::Path::new),
            "--repeat" => match rest.next().and_then(|n| n.parse().ok()) {
                Some(n) => repeat = n,
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(64);
                }
            },
            other if !other.starts_with("--") => jobs.push(std::path::Path::new(other)),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    if jobs.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dtee-worker: {error}");
            return ExitCode::from(64);
        }
    };
    let executed = match dtee_worker::tools::exec(&config, &jobs, blobs, repeat) {
        Ok(executed) => executed,
        Err(error) => {
            eprintln!("dtee-worker exec: {error:#}");
            return ExitCode::from(2);
        }
    };
    let mut all_succeeded = true;
    for dtee_worker::tools::Executed {
        result,
        mut timings,
    } in executed
    {
        if !timings.is_empty() {
            timings.sort();
            let at = |q: f64| timings[((timings.len() - 1) as f64 * q).round() as usize];
            eprintln!(
                "exec --repeat {}: median {} us, p99 {} us, min {} us",
                timings.len(),
                at(0.5).as_micros(),
                at(0.99).as_micros(),
                timings[0].as_micros()
            );
        }
        all_succeeded &= result.succeeded();
        // One job: the result, pretty; several: one result per line.
        let text = if jobs.len() == 1 {
            serde_json::to_string_pretty(&result)
        } else {
            serde_json::to_string(&result)
        };
        println!("{}", text.expect("a result serializes"));
    }
    if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
