/// What a probe test printed when run again, in a child process, with an environment of
/// its own.
///
/// A test may not change its own environment (`set_var` is unsafe and the workspace
/// forbids unsafe code), so config tests run the test binary again: only the test named
/// `test` (its path inside the binary, e.g. `config::tests::print_from_env`), with `probe`
/// set so that it does its work, every variable starting with one of `clear` removed, and
/// `set` added. The probe prints one line `from_env: <result>`; that result is returned.
pub fn rerun_with_env(test: &str, probe: &str, clear: &[&str], set: &[(&str, &str)]) -> String {
    let binary = std::env::current_exe().expect("the test binary");
    let mut command = std::process::Command::new(binary);
    command
        .args(["--exact", test, "--nocapture"])
        .env(probe, "1");
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if clear.iter().any(|prefix| name_text.starts_with(prefix)) {
            command.env_remove(&name);
        }
    }
    for (name, value) in set {
        command.env(name, value);
    }
    let output = command.output().expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("from_env: "))
        .unwrap_or_else(|| panic!("the child printed no result: {stdout}"))
        .to_owned()
}
