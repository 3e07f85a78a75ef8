//! The intent binary with `ATELIER_TLS_*` set serves mutual TLS only, and its own
//! `--health-check` (the container probe) speaks it: the whole path from the environment
//! through `service_main` to the server, as every service takes it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cert(name: &str) -> String {
    format!(
        "{}/../../shared/testkit/certs/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn probe(addr: &str, tls: bool) -> bool {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atelier-intent"));
    command
        .arg("--health-check")
        .env("ATELIER_LISTEN_ADDR", addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if tls {
        command
            .env("ATELIER_TLS_CERT_FILE", cert("service.pem"))
            .env("ATELIER_TLS_KEY_FILE", cert("service.key"))
            .env("ATELIER_TLS_CA_FILE", cert("ca.pem"));
    }
    command.status().expect("the probe runs").success()
}

#[test]
fn the_service_serves_mutual_tls_and_probes_itself_over_it() {
    let addr = atelier_testkit::free_local_addr().to_string();
    let mut server = Command::new(env!("CARGO_BIN_EXE_atelier-intent"))
        .env("ATELIER_ENV", "development")
        .env("ATELIER_LISTEN_ADDR", &addr)
        .env("ATELIER_TLS_CERT_FILE", cert("service.pem"))
        .env("ATELIER_TLS_KEY_FILE", cert("service.key"))
        .env("ATELIER_TLS_CA_FILE", cert("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the service starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut serving = false;
    while Instant::now() < deadline {
        if probe(&addr, true) {
            serving = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A plaintext probe gets no answer from a TLS port.
    let plaintext = probe(&addr, false);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        serving,
        "the probe never reached the service over mutual TLS"
    );
    assert!(!plaintext, "a TLS-only port answered plaintext");
}
