use super::*;

fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
    let mut argv = vec!["dtee-worker"];
    argv.extend_from_slice(extra);
    Config::parse_from(argv)
}

#[test]
fn bad_settings_name_the_variable_and_the_value() {
    let error = parse(&["--concurrency", "many"]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "DTEE_CONCURRENCY=many is not valid: expected a whole number"
    );
    let error = parse(&["--prefetch", "0"]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "DTEE_PREFETCH=0 is not valid: must be at least 1"
    );
    let error = parse(&["--default-fuel", "5", "--max-fuel", "4"]).unwrap_err();
    assert_eq!(error.name, "DTEE_DEFAULT_FUEL");
    let error = parse(&["--targets", "opencl"]).unwrap_err();
    assert_eq!(error.name, "DTEE_TARGETS");
    let error = parse(&["--targets", "auto,wasm"]).unwrap_err();
    assert_eq!(error.name, "DTEE_TARGETS");
    // GPU targets parse; whether this machine can serve them is decided at start-up.
    assert_eq!(
        parse(&["--targets", "wasm,cuda,hip.gfx90a"])
            .unwrap()
            .targets,
        ["wasm", "cuda", "hip.gfx90a"]
    );
    let error = parse(&["--namespace", "Bad.Name"]).unwrap_err();
    assert_eq!(error.name, "DTEE_NAMESPACE");
    // TLS URLs and cluster node lists are accepted; bad schemes are refused by name,
    // without echoing passwords.
    assert!(parse(&["--amqp-url", "amqps://u:p@a/%2f,AMQPS://u:p@b/%2f"]).is_ok());
    assert!(parse(&["--redis-url", "rediss+cluster://a:7001,b:7002"]).is_ok());
    let error = parse(&["--amqp-url", "amqp://u:p@a/%2f,http://user:secret@b/"]).unwrap_err();
    assert_eq!(error.name, "DTEE_AMQP_URL");
    assert!(
        !error.to_string().contains("secret"),
        "passwords are not echoed"
    );
    let error = parse(&["--redis-url", "redis+cluster://a:1/2"]).unwrap_err();
    assert_eq!(error.name, "DTEE_REDIS_URL");
    let error = parse(&["--tls-ca-file", "/nonexistent/ca.pem"]).unwrap_err();
    assert_eq!(error.name, "DTEE_TLS_CA_FILE");
    assert!(parse(&["--amqp-url", "AMQP://guest:guest@host/%2f"]).is_ok());
}

#[test]
fn every_parser_names_its_variable() {
    for (flags, expected) in [
        (
            &["--result-ttl-secs", "0"][..],
            "DTEE_RESULT_TTL_SECS=0 is not valid: must be at least 1",
        ),
        (
            &["--applied-ttl-secs", "315360001"],
            "DTEE_APPLIED_TTL_SECS=315360001 is not valid: must be at most 315360000 (ten years)",
        ),
        (
            &["--failure-ttl-secs", "99999999999999999"],
            "DTEE_FAILURE_TTL_SECS=99999999999999999 is not valid: must be at most 315360000 (ten years)",
        ),
        (
            &["--tpm-pcr", "24"],
            "DTEE_TPM_PCR=24 is not valid: PCRs are 0 to 23",
        ),
        (
            &["--max-memory-bytes", "8589934592"],
            "DTEE_MAX_MEMORY_BYTES=8589934592 is not valid: a 32-bit WebAssembly memory cannot exceed 4 GiB",
        ),
        (
            &["--log-format", "yaml"],
            "DTEE_LOG_FORMAT=yaml is not valid: expected text or json",
        ),
        (
            &["--metrics-addr", "anywhere"],
            "DTEE_METRICS_ADDR=anywhere is not valid: expected HOST:PORT, e.g. 0.0.0.0:9464",
        ),
        (
            &["--attestation", "sgx"],
            "DTEE_ATTESTATION=sgx is not valid: expected snp, tpm, software or auto",
        ),
        (
            &["--worker-id", "two words"],
            "DTEE_WORKER_ID=two words is not valid: must be 1 to 128 printable characters without spaces",
        ),
    ] {
        let error = parse(flags).unwrap_err();
        assert_eq!(error.to_string(), expected, "{flags:?}");
    }
    let error = parse(&["--single-tenant", ""]).unwrap_err();
    assert_eq!(error.name, "DTEE_SINGLE_TENANT");
    let error = parse(&[
        "--default-memory-bytes",
        "131072",
        "--max-memory-bytes",
        "65536",
    ])
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "DTEE_DEFAULT_MEMORY_BYTES=131072 is not valid: the default exceeds the maximum (65536)"
    );
}

/// With the feature, hooks are parsed; without it, any hook is refused, so that a release
/// worker can never be paused or broken through its environment.
#[test]
fn test_hooks_exist_only_with_the_feature() {
    let error = parse(&["--test-hook", "sleep"]).unwrap_err();
    let result = parse(&["--test-hook", "stall-consumer"]);
    #[cfg(feature = "test-hooks")]
    {
        assert_eq!(
            error.to_string(),
            "DTEE_TEST_HOOK=sleep is not valid: hooks: pause-after-commit, stall-consumer, panic-in-kernel, panic-in-job, slow-publish, slow-failure"
        );
        assert_eq!(result.unwrap().test_hook, Some(TestHook::StallConsumer));
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        let refused =
            "is not valid: this worker was built without test hooks (cargo feature test-hooks)";
        assert_eq!(error.to_string(), format!("DTEE_TEST_HOOK=sleep {refused}"));
        assert_eq!(
            result.unwrap_err().to_string(),
            format!("DTEE_TEST_HOOK=stall-consumer {refused}")
        );
    }
}

#[test]
fn settings_reach_the_config() {
    let config = parse(&[
        "--targets",
        " wasm, ",
        "--concurrency",
        "3",
        "--metrics-addr",
        "127.0.0.1:9464",
        "--log-format",
        "json",
        "--tpm-pcr",
        "16",
        "--shutdown-grace-secs",
        "0",
    ])
    .unwrap();
    assert_eq!(config.targets, ["wasm"]);
    assert_eq!((config.concurrency, config.prefetch), (3, 24));
    assert_eq!(config.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    assert!(config.log_json);
    assert_eq!(config.provider_settings.tpm_pcr, 16);
    assert_eq!(config.shutdown_grace, Duration::ZERO);
    // An empty value is the same as no value for the optional addresses and hooks.
    let config = parse(&["--metrics-addr", "", "--test-hook", ""]).unwrap();
    assert_eq!(config.metrics_addr, None);
    #[cfg(feature = "test-hooks")]
    assert_eq!(config.test_hook, None);
}

/// The README's table of settings and the flags agree, in both directions.
#[test]
fn the_readme_lists_every_setting() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let table = readme
        .split("## Configuring a worker")
        .nth(1)
        .expect("the README has a section on configuring a worker");
    let mut documented: Vec<&str> = table
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|row| row.split('|').nth(1))
        .flat_map(|cell| cell.split('`'))
        .filter(|word| word.starts_with("DTEE_"))
        // Read by the binary's log filter, not a flag.
        .filter(|name| *name != "DTEE_LOG")
        .collect();
    documented.sort_unstable();
    let command = <Args as clap::CommandFactory>::command();
    let mut flags: Vec<&str> = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| arg.get_env()?.to_str())
        .collect();
    flags.sort_unstable();
    assert!(flags.contains(&"DTEE_AMQP_URL") && flags.contains(&"DTEE_LOG_FORMAT"));
    assert_eq!(documented, flags);
}

#[test]
fn defaults_are_consistent() {
    let config = parse(&[]).unwrap();
    assert!(config.concurrency >= 1);
    assert_eq!(config.prefetch as usize, config.concurrency * 8);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.runtime_threads, (cores / 2).max(1));
    assert_eq!(
        parse(&["--runtime-threads", "3"]).unwrap().runtime_threads,
        3
    );
    assert!(parse(&["--runtime-threads", "0"]).is_err());
    assert_eq!(config.targets, vec!["auto".to_owned()]);
}
