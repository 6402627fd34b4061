//! The `dtee` command line: put, submit, wait, run, and its exit codes.

use std::process::Command;

use dtee_tests::{binary, repo_root, TestEnv};

fn dtee(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(binary("dtee"));
    command
        .args(args)
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url());
    dtee_tests::blocking(|| command.output()).expect("running dtee")
}

/// Checks a `dtee` run's exit code, showing its stderr when it differs.
fn exits_with(output: &std::process::Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_puts_submits_waits_and_runs_with_distinct_exit_codes() {
    let env = TestEnv::new("cli").await;
    let worker = env.start_worker().await;
    let kernel = repo_root().join("kernels/wasm/saxpy.wasm");
    let kernel = kernel.to_str().unwrap();

    let put = dtee(&env, &["kernel", "put", kernel]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let digest = String::from_utf8(put.stdout).unwrap().trim().to_owned();
    assert_eq!(
        digest,
        dtee_schemas::Digest::of(&dtee_tests::kernel("saxpy")).to_string()
    );

    let job = [
        "--kernel-digest",
        &digest,
        "--entry",
        "saxpy",
        "--input",
        "x=f32:1,2",
        "--input",
        "y=f32:10,20",
        "--param",
        "a:f32=3",
        "--output",
        "out:8",
    ];
    let submit = dtee(&env, &[&["submit"][..], &job].concat());
    exits_with(&submit, 0);
    let job_id = String::from_utf8(submit.stdout).unwrap().trim().to_owned();
    assert!(job_id.starts_with("sha256:"));

    let wait = dtee(&env, &["wait", &job_id, "--timeout", "30"]);
    assert_eq!(wait.status.code(), Some(0));
    let result: dtee_schemas::JobResult = serde_json::from_slice(&wait.stdout).unwrap();
    let out = dtee_tests::f32_values(&result.output("out").unwrap().bytes().unwrap());
    assert_eq!(out, vec![13.0, 26.0]);

    // A failing job exits 1 and still prints its result.
    let run = dtee(
        &env,
        &[
            "run",
            "--kernel-digest",
            &digest,
            "--entry",
            "missing_entry",
            "--timeout",
            "30",
        ],
    );
    exits_with(&run, 1);
    let result: dtee_schemas::JobResult = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        result.error_code(),
        Some(dtee_schemas::ErrorCode::KernelLinkFailed)
    );

    // Waiting for a job nobody submitted times out with 3.
    let never = dtee_schemas::Digest::of(b"never submitted").to_string();
    let wait = dtee(&env, &["wait", &never, "--timeout", "0.5"]);
    assert_eq!(wait.status.code(), Some(3));

    // An invalid job file is refused before anything is sent: 64.
    let dir = std::env::temp_dir().join(format!("dtee-cli-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, br#"{"schema":"dtee.job/v1"}"#).unwrap();
    let submit = dtee(&env, &["submit", bad.to_str().unwrap()]);
    assert_eq!(submit.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&submit.stderr).contains("kernel"));
    std::fs::remove_dir_all(&dir).unwrap();

    // With no worker left, `dtee run` of the job answered above takes the cached result and
    // publishes nothing (PROTOCOL.md §9, step 3): no job waits in a queue afterwards.
    worker.shutdown().await.unwrap();
    let run = dtee(&env, &[&["run"][..], &job, &["--timeout", "5"]].concat());
    exits_with(&run, 0);
    let result: dtee_schemas::JobResult = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(result.job_id.to_string(), job_id);
    assert_eq!(
        env.queue_depth("wasm").await,
        0,
        "the cached job was published"
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("answered from the result cache"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtee_verify_prints_every_check_and_exits_by_the_verdict() {
    let env = TestEnv::new("cli-verify").await;
    let worker = env.start_worker().await;
    let mut spec = dtee_submitter::builder::wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![
        dtee_submitter::builder::inline_input("in", b"verify me"),
        dtee_submitter::builder::output("out", 16),
    ];
    let result = env.run(&spec).await;
    let dir = std::env::temp_dir().join(format!("dtee-verify-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("result.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    let policies = repo_root().join("deploy/policies");

    let ok = dtee(
        &env,
        &[
            "verify",
            path.to_str().unwrap(),
            "--policy",
            policies.join("software-dev.toml").to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("PASS  envelope.signature") && stdout.contains("verdict: ACCEPTED"),
        "{stdout}"
    );

    let rejected = dtee(
        &env,
        &[
            "verify",
            path.to_str().unwrap(),
            "--policy",
            policies.join("tpm.toml").to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&rejected.stdout);
    assert_eq!(rejected.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  software.allowed") && stdout.contains("verdict: REJECTED"),
        "{stdout}"
    );

    // What the result says is printed with its control characters escaped: evidence text that
    // clears the line and writes a verdict of its own does not reach the terminal as such.
    let mut forged = serde_json::to_value(&result).unwrap();
    fn replace(value: &mut serde_json::Value, from: &str, to: &str) -> bool {
        match value {
            serde_json::Value::String(text) if text == from => {
                *text = to.to_owned();
                true
            }
            serde_json::Value::Array(items) => items.iter_mut().any(|v| replace(v, from, to)),
            serde_json::Value::Object(map) => map.values_mut().any(|v| replace(v, from, to)),
            _ => false,
        }
    }
    let fake = "x\n\u{1b}[2Kverdict: ACCEPTED\n\u{1b}[8m";
    assert!(replace(
        &mut forged,
        dtee_schemas::attestation::evidence::SOFTWARE_STATEMENT,
        fake
    ));
    let forged_path = dir.join("forged.json");
    std::fs::write(&forged_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let shown = dtee(
        &env,
        &[
            "verify",
            forged_path.to_str().unwrap(),
            "--policy",
            policies.join("tpm.toml").to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(
        stdout.contains("x\\n\\u{1b}[2Kverdict: ACCEPTED"),
        "{stdout:?}"
    );
    assert_eq!(stdout.matches("verdict:").count(), 2, "{stdout:?}");

    // A policy with a typo is bad input, not a verdict.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "allow_sofware = true\n").unwrap();
    let typo = dtee(
        &env,
        &[
            "verify",
            path.to_str().unwrap(),
            "--policy",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(typo.status.code(), Some(64));
    std::fs::remove_dir_all(&dir).unwrap();
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Runs `dtee` with explicit connection flags (no TestEnv defaults).
fn dtee_raw(args: &[&str]) -> (Option<i32>, String) {
    let output = dtee_tests::blocking(|| Command::new(binary("dtee")).args(args).output())
        .expect("run dtee");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_each_cause_once_with_context_and_a_hint() {
    let env = TestEnv::new("cli-errors").await;
    let echo = env.put_kernel("echo").await;
    let job = serde_json::json!({
        "schema": "dtee.job/v1",
        "kernel": {"digest": echo.to_string(), "format": "wasm", "entry": "echo", "target": "wasm"},
        "buffers": [{"kind": "input", "name": "in", "inline": "aGk="}, {"kind": "output", "name": "out", "size": 8}],
        "params": []
    });
    let path = std::env::temp_dir().join(format!("dtee-cli-errors-{}.json", env.namespace));
    std::fs::write(&path, serde_json::to_vec(&job).unwrap()).unwrap();
    let path = path.to_str().unwrap();
    let amqp = dtee_tests::amqp_url();
    let redis = env.redis_url.clone();

    // No worker ever started in the namespace.
    let (code, stderr) = dtee_raw(&[
        "--amqp-url",
        &amqp,
        "--redis-url",
        &redis,
        "--namespace",
        "dtee-nobody-here",
        "run",
        path,
    ]);
    assert_eq!(code, Some(4), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line of cause and one hint: {stderr}");
    assert_eq!(
        lines[0].matches("no exchange").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        lines[1].contains("no worker has started in namespace \"dtee-nobody-here\""),
        "{stderr}"
    );

    // RabbitMQ unreachable: the URL tried, its password redacted, the cause once.
    let (code, stderr) = dtee_raw(&[
        "--amqp-url",
        "amqp://guest:secret@127.0.0.1:1/%2f",
        "--redis-url",
        &redis,
        "run",
        path,
    ]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
    assert!(
        stderr.contains("connecting to rabbitmq at amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert!(stderr.contains("hint: is RabbitMQ running"), "{stderr}");

    // A wrong password: the login is refused, and the hint says so.
    let (code, stderr) = dtee_raw(&[
        "--amqp-url",
        "amqp://guest:wrong@127.0.0.1:5672/%2f",
        "--redis-url",
        &redis,
        "run",
        path,
    ]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(!stderr.contains("wrong@"), "{stderr}");
    assert!(
        stderr.contains("hint: RabbitMQ refused the user name or password"),
        "{stderr}"
    );

    // Redis unreachable.
    let (_, stderr) = dtee_raw(&[
        "--amqp-url",
        &amqp,
        "--redis-url",
        "redis://127.0.0.1:1/",
        "run",
        path,
    ]);
    assert!(
        stderr.contains("connecting to redis at redis://127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: is Redis running"), "{stderr}");

    // No route: the hint lists what the registered workers serve.
    let worker = env.start_worker().await;
    let mut other = job.clone();
    other["kernel"]["target"] = serde_json::json!("opencl");
    std::fs::write(path, serde_json::to_vec(&other).unwrap()).unwrap();
    let ns = env.namespace.to_string();
    let (code, stderr) = dtee_raw(&[
        "--amqp-url",
        &amqp,
        "--redis-url",
        &redis,
        "--namespace",
        &ns,
        "run",
        path,
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("serve routing keys: wasm"), "{stderr}");

    // -v shows the whole chain, a cause per line.
    let (_, stderr) = dtee_raw(&[
        "-v",
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "--redis-url",
        &redis,
        "run",
        path,
    ]);
    assert!(stderr.contains("the causes, outermost first"), "{stderr}");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_set_up_and_says_what_is_wrong_otherwise() {
    let env = TestEnv::new("cli-doctor").await;
    let worker = env.start_worker().await;
    let amqp = dtee_tests::amqp_url();
    let ns = env.namespace.to_string();
    let doctor = |namespace: &str, redis: &str| {
        let mut command = Command::new(binary("dtee"));
        command.args([
            "--amqp-url",
            &amqp,
            "--redis-url",
            redis,
            "--namespace",
            namespace,
            "doctor",
            "--json",
        ]);
        let output = dtee_tests::blocking(|| command.output()).expect("run dtee doctor");
        let checks: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).expect("doctor --json prints JSON");
        (output.status.code(), checks)
    };
    let failed = |checks: &[serde_json::Value]| -> Vec<String> {
        checks
            .iter()
            .filter(|c| c["ok"] == false)
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // Healthy: every check passes, the canary job included.
    let (code, checks) = doctor(&ns, &env.redis_url);
    assert_eq!(code, Some(0), "{checks:#?}");
    assert!(failed(&checks).is_empty());
    let rabbitmq = checks.iter().find(|c| c["name"] == "rabbitmq").unwrap();
    assert!(
        rabbitmq["detail"].as_str().unwrap().contains("RabbitMQ 3."),
        "{rabbitmq}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "canary job" && c["ok"] == true),
        "{checks:#?}"
    );

    // A namespace without workers: its exchanges and workers fail, with hints.
    let (code, checks) = doctor("dtee-doctor-nobody", &env.redis_url);
    assert_eq!(code, Some(1));
    let names = failed(&checks);
    assert!(
        names.contains(&"jobs exchange".to_owned()) && names.contains(&"workers".to_owned()),
        "{names:?}"
    );
    assert!(checks
        .iter()
        .filter(|c| c["ok"] == false)
        .all(|c| c["hint"].is_string()));

    // Redis down.
    let (code, checks) = doctor(&ns, "redis://127.0.0.1:1/");
    assert_eq!(code, Some(1));
    assert_eq!(failed(&checks), ["redis"], "{checks:#?}");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_man_page_and_machine_readable_workers() {
    let env = TestEnv::new("cli-conventions").await;
    for (shell, marker) in [
        ("bash", "_dtee()"),
        ("zsh", "#compdef dtee"),
        ("fish", "complete -c dtee"),
    ] {
        let out = dtee(&env, &["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(marker) && text.contains("doctor"),
            "{shell}: {text}"
        );
    }
    let man = dtee(&env, &["man"]);
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH dtee 1"));
    let worker = env.start_worker().await;
    let out = dtee(&env, &["workers", "--output", "json"]);
    assert!(out.status.success());
    let workers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(
        workers[0]["identity"]["worker_id"],
        worker.worker_id.as_str()
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_line_is_shown_while_waiting_on_a_terminal_only() {
    let env = TestEnv::new("cli-progress").await;
    let worker = env.start_worker().await;
    // A job that takes about a second: it spins until its 1 s deadline.
    let spin = env.put_kernel("spin").await;
    let job = |nonce: &str| {
        serde_json::json!({
            "schema": "dtee.job/v1",
            "kernel": {"digest": spin.to_string(), "format": "wasm", "entry": "spin", "target": "wasm"},
            "limits": {"timeout_ms": 1000, "fuel": 1_000_000_000_000u64},
            "nonce": nonce
        })
    };
    let dir = std::env::temp_dir();
    let on_tty = dir.join(format!("dtee-progress-tty-{}.json", env.namespace));
    let off_tty = dir.join(format!("dtee-progress-pipe-{}.json", env.namespace));
    std::fs::write(&on_tty, serde_json::to_vec(&job("tty")).unwrap()).unwrap();
    std::fs::write(&off_tty, serde_json::to_vec(&job("pipe")).unwrap()).unwrap();
    // On a terminal (script(1) gives dtee a pseudo-terminal): the status line, then cleared.
    let command = format!(
        "{} run {} >/dev/null",
        binary("dtee").display(),
        on_tty.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url());
    let output = dtee_tests::blocking(|| script.output()).expect("script(1) from util-linux");
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(terminal.contains("waiting for sha256:"), "{terminal:?}");
    assert!(
        terminal.contains("\u{1b}[2K"),
        "the line is cleared: {terminal:?}"
    );
    // Not a terminal: only the submission line.
    let piped = dtee(&env, &["run", off_tty.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("waiting for"), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// `--print-job` builds the job without connecting to anything or storing anything: the kernel
/// and blob files are only hashed (unreachable broker and Redis here), and the printed job is
/// the one `submit` would send.
/// `dtee` pointed at a broker and a Redis that are not there.
fn offline_dtee() -> Command {
    let mut command = Command::new(binary("dtee"));
    command
        .env("DTEE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("DTEE_REDIS_URL", "redis://127.0.0.1:1");
    command
}

#[test]
fn print_job_connects_to_nothing_and_stores_nothing() {
    let dir = std::env::temp_dir().join(format!("dtee-print-job-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blob = dir.join("y.bin");
    std::fs::write(&blob, [0u8, 0, 0, 63]).unwrap();
    let kernel = repo_root().join("kernels/wasm/saxpy.wasm");
    for command in ["submit", "run"] {
        let output = offline_dtee()
            .args([command, "--print-job", "--kernel", kernel.to_str().unwrap()])
            .args(["--entry", "saxpy", "--input", "x=f32:1"])
            .arg(format!("--input=y=blob:@{}", blob.display()))
            .args(["--param", "a:f32=2", "--output", "out:4"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{command}: {stderr}");
        let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            job["kernel"]["digest"],
            dtee_schemas::Digest::of(&dtee_tests::kernel("saxpy")).to_string()
        );
        assert_eq!(
            job["buffers"][1]["blob"],
            dtee_schemas::Digest::of(&[0, 0, 0, 63]).to_string()
        );
        dtee_schemas::parse_job(&output.stdout).expect("a valid job");
        assert!(
            job["kernel"].get("profile").is_none(),
            "no profile unless asked"
        );
    }
    // `--profile fast` writes the profile; with `--fuel` too it is refused before anything is
    // sent (the fast profile meters no fuel): 64, naming the field.
    let print = |extra: &[&str]| {
        offline_dtee()
            .args(["run", "--print-job", "--kernel", kernel.to_str().unwrap()])
            .args(["--entry", "saxpy", "--output", "out:4", "--profile", "fast"])
            .args(extra)
            .output()
            .unwrap()
    };
    let fast = print(&[]);
    exits_with(&fast, 0);
    let job: serde_json::Value = serde_json::from_slice(&fast.stdout).unwrap();
    assert_eq!(job["kernel"]["profile"], "fast");
    let refused = print(&["--fuel", "1000"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("limits.fuel"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
