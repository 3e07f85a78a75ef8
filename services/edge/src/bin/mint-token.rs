//! `atelier-mint-token --sub alice [--ttl-seconds 3600]`: prints an HS256 JWT the local edge
//! accepts, signed with `ATELIER_JWT_HS256_SECRET` (or the local default).

use std::process::ExitCode;

const USAGE: &str = "usage: atelier-mint-token --sub <user-id> [--ttl-seconds <seconds>]";

fn main() -> ExitCode {
    let mut subject = None;
    let mut ttl_seconds: i64 = 3600;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--sub", Some(value)) => subject = Some(value),
            ("--ttl-seconds", Some(value)) => match value.parse() {
                Ok(value) => ttl_seconds = value,
                Err(_) => {
                    eprintln!("--ttl-seconds must be a whole number\n{USAGE}");
                    return ExitCode::from(64);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    let Some(subject) = subject else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let secret = std::env::var("ATELIER_JWT_HS256_SECRET")
        .unwrap_or_else(|_| atelier_edge::config::DEFAULT_JWT_SECRET.to_owned());
    match atelier_edge::auth::mint_hs256(secret.as_bytes(), &subject, ttl_seconds) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("atelier-mint-token: {err:#}");
            ExitCode::FAILURE
        }
    }
}
