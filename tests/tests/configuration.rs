//! The README's configuration reference against the code: every variable a service, a
//! shared crate or a deployment script reads is documented there, and every variable
//! documented there is still read somewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// Every `ATELIER_*` name in `text`. A name ending in `_` is a prefix (a test clearing a
/// family of variables), not a variable.
fn names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ATELIER_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.ends_with('_') {
            found.insert(name.clone());
        }
        rest = &rest[at + name.len().max(1)..];
    }
    found
}

fn files(dir: &Path, extension: &str, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            // Tests, examples and build output are not the product.
            if !matches!(
                name.to_str(),
                Some("tests" | "examples" | "target" | "node_modules" | "testkit")
            ) {
                files(&path, extension, into);
            }
        } else if path.extension().is_some_and(|e| e == extension) {
            into.push(path);
        }
    }
}

/// What the product reads: the services' and shared crates' sources (their unit tests
/// cut off) and the deployment scripts.
fn read_by_the_code() -> BTreeSet<String> {
    let root = repo();
    let mut sources = Vec::new();
    for dir in ["services", "shared"] {
        files(&root.join(dir), "rs", &mut sources);
    }
    let mut scripts = Vec::new();
    files(&root.join("deploy"), "sh", &mut scripts);
    let mut read = BTreeSet::new();
    for path in sources {
        let text = std::fs::read_to_string(&path).expect("readable");
        let product = text.split("#[cfg(test)]").next().unwrap_or_default();
        read.extend(names(product));
    }
    for path in scripts {
        read.extend(names(&std::fs::read_to_string(&path).expect("readable")));
    }
    read
}

/// Names in the README's "Configuration" section that are not variables: the JetStream
/// streams, named in the text about retention.
const NOT_VARIABLES: [&str; 2] = ["ATELIER_EVENTS", "ATELIER_JOBS"];

/// What the tests read (documented for whoever runs them): only for the stale check.
fn read_by_the_tests() -> BTreeSet<String> {
    let mut sources = Vec::new();
    for dir in ["tests/tests", "tests/src"] {
        files(&repo().join(dir), "rs", &mut sources);
    }
    sources
        .iter()
        .flat_map(|path| names(&std::fs::read_to_string(path).expect("readable")))
        .collect()
}

/// The names in the README's "Configuration" section.
fn documented() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Configuration")
        .expect("a Configuration section");
    let section = &readme[start + 1..];
    let end = section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3);
    names(&section[..end])
}

#[test]
fn every_variable_the_code_reads_is_documented_and_none_documented_is_stale() {
    let read = read_by_the_code();
    let documented = documented();
    assert!(read.len() > 50, "the scan found the code: {read:?}");
    let undocumented: Vec<_> = read.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code but not in README.md's Configuration: {undocumented:?}"
    );
    let known: BTreeSet<String> = read
        .iter()
        .cloned()
        .chain(read_by_the_tests())
        .chain(NOT_VARIABLES.map(String::from))
        .collect();
    let stale: Vec<_> = documented.difference(&known).collect();
    assert!(
        stale.is_empty(),
        "in README.md's Configuration but read by nothing: {stale:?}"
    );
}

#[test]
fn names_are_found_whole_and_prefixes_are_skipped() {
    let found = names("var(\"ATELIER_NATS_URL\") `ATELIER_S3_` ATELIER_X1, ATELIER_");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["ATELIER_NATS_URL", "ATELIER_X1"]
    );
}
