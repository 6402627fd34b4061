//! Runs the RFC 8785 test vectors in `schemas/vectors/jcs/` (see `schemas/vectors/README.md`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dtee_schemas::canonical::{canonical_digest, parse_strict, to_canonical_vec};
use dtee_schemas::Digest;

fn jcs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/jcs")
}

/// Sorted file names in `dir` that end with `suffix`.
fn files_ending_with(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// `NAME -> digest` from `digests.txt` (`sha256:<hex>  NAME` per line).
fn digests() -> BTreeMap<String, Digest> {
    let text = fs::read_to_string(jcs_dir().join("digests.txt")).unwrap();
    let mut digests = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let (digest, name) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("digests.txt:{}: expected `sha256:<hex>  NAME`", number + 1));
        let digest: Digest = digest
            .parse()
            .unwrap_or_else(|error| panic!("digests.txt:{}: {error}", number + 1));
        assert!(
            digests.insert(name.to_owned(), digest).is_none(),
            "digests.txt lists {name} twice"
        );
    }
    digests
}

/// The vector names: every `NAME.input.json`.
fn vector_names() -> Vec<String> {
    files_ending_with(&jcs_dir(), ".input.json")
        .into_iter()
        .map(|file| file.trim_end_matches(".input.json").to_owned())
        .collect()
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_vector_canonicalizes_to_the_expected_bytes_and_digest() {
    let dir = jcs_dir();
    let digests = digests();
    let names = vector_names();
    assert!(names.len() >= 12, "only {} vectors", names.len());

    let mut failures = Vec::new();
    for name in &names {
        let input = fs::read(dir.join(format!("{name}.input.json"))).unwrap();
        let expected = fs::read(dir.join(format!("{name}.canonical.json")))
            .unwrap_or_else(|error| panic!("{name}.canonical.json: {error}"));
        let Some(expected_digest) = digests.get(name) else {
            failures.push(format!("{name}: not listed in digests.txt"));
            continue;
        };

        let value = match parse_strict(&input) {
            Ok(value) => value,
            Err(error) => {
                failures.push(format!("{name}: input refused: {error}"));
                continue;
            }
        };
        let canonical = match to_canonical_vec(&value) {
            Ok(bytes) => bytes,
            Err(error) => {
                failures.push(format!("{name}: no canonical form: {error}"));
                continue;
            }
        };
        if canonical != expected {
            failures.push(format!(
                "{name}: canonical form differs\n  expected: {}\n  actual:   {}",
                show(&expected),
                show(&canonical)
            ));
            continue;
        }
        if Digest::of(&expected) != *expected_digest {
            failures.push(format!(
                "{name}: digests.txt says {expected_digest}, the canonical file hashes to {}",
                Digest::of(&expected)
            ));
        }
        if canonical_digest(&value).as_ref() != Ok(expected_digest) {
            failures.push(format!(
                "{name}: canonical_digest disagrees with digests.txt"
            ));
        }
        // Canonicalization is idempotent: the canonical form is itself a valid input.
        match parse_strict(&expected).map(|value| to_canonical_vec(&value)) {
            Ok(Ok(again)) if again == expected => {}
            other => failures.push(format!(
                "{name}: canonical form does not canonicalize to itself: {other:?}"
            )),
        }
    }

    for listed in digests.keys() {
        if !names.contains(listed) {
            failures.push(format!(
                "digests.txt lists {listed}, which has no input file"
            ));
        }
    }
    for file in files_ending_with(&dir, ".canonical.json") {
        let name = file.trim_end_matches(".canonical.json");
        if !names.iter().any(|known| known == name) {
            failures.push(format!("{file} has no {name}.input.json"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

#[test]
fn job_vectors_are_jobs_whose_id_is_the_digest() {
    let dir = jcs_dir();
    let digests = digests();
    let jobs: Vec<String> = vector_names()
        .into_iter()
        .filter(|name| name.starts_with("dtee-job"))
        .collect();
    assert!(!jobs.is_empty(), "no dtee-job-* vector");
    for name in jobs {
        let input = fs::read(dir.join(format!("{name}.input.json"))).unwrap();
        let parsed = dtee_schemas::parse_job(&input)
            .unwrap_or_else(|error| panic!("{name}: not a valid job: {error}"));
        assert_eq!(parsed.id, digests[&name], "{name}: job id");
    }
}

#[test]
fn every_invalid_vector_is_refused() {
    let dir = jcs_dir().join("invalid");
    let files = files_ending_with(&dir, ".json");
    for required in [
        "duplicate-key.json",
        "integer-above-2-pow-53.json",
        "trailing-text.json",
    ] {
        assert!(
            files.iter().any(|file| file == required),
            "invalid/{required} is missing"
        );
    }
    let mut accepted = Vec::new();
    for file in &files {
        let input = fs::read(dir.join(file)).unwrap();
        let outcome = parse_strict(&input)
            .map_err(|error| error.to_string())
            .and_then(|value| to_canonical_vec(&value).map_err(|error| error.to_string()));
        if let Ok(canonical) = outcome {
            accepted.push(format!(
                "invalid/{file} was accepted as {}",
                show(&canonical)
            ));
        }
        assert!(
            dtee_schemas::parse_job(&input).is_err(),
            "invalid/{file} parsed as a job"
        );
    }
    assert!(accepted.is_empty(), "{}", accepted.join("\n"));
}
