//! The edge process: see the library for what it does.

fn main() -> std::process::ExitCode {
    atelier_runtime::process::service_main(
        "edge",
        "127.0.0.1:50051",
        atelier_edge::Config::from_env,
        atelier_edge::run,
    )
}
