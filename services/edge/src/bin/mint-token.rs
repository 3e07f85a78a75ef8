//! `atelier-mint-token --sub alice [--ttl-seconds 3600]`: prints an HS256 JWT the local edge
//! accepts, signed with `ATELIER_JWT_HS256_SECRET`; unset, with the secret `run.sh`
//! generated (`.dev/secrets/jwt-hs256`, from the checkout's root), or with the development
//! value when `ATELIER_ENV=development`.

use std::process::ExitCode;

const USAGE: &str = "usage: atelier-mint-token --sub <user-id> [--ttl-seconds <seconds>]";
/// Where `run.sh` keeps the local mesh's JWT secret.
const LOCAL_SECRET_FILE: &str = ".dev/secrets/jwt-hs256";

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
    let secret = match secret() {
        Ok(secret) => secret,
        Err(err) => {
            eprintln!("atelier-mint-token: {err}");
            return ExitCode::from(64);
        }
    };
    match atelier_edge::auth::mint_hs256(secret.expose().as_bytes(), &subject, ttl_seconds) {
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

fn secret() -> Result<atelier_runtime::config::Secret, String> {
    use atelier_runtime::config::{Environment, Secret, secret};
    let environment = Environment::from_env().map_err(|err| err.to_string())?;
    let set = std::env::var("ATELIER_JWT_HS256_SECRET").is_ok_and(|value| !value.is_empty());
    if !set && let Ok(local) = std::fs::read_to_string(LOCAL_SECRET_FILE) {
        return Ok(Secret::new(local.trim()));
    }
    secret(
        "ATELIER_JWT_HS256_SECRET",
        atelier_edge::config::DEFAULT_JWT_SECRET,
        environment,
    )
    .map_err(|err| err.to_string())
}
