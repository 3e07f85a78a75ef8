//! Optional TLS on every gRPC port, and mutual TLS between services (rustls, through
//! tonic), set once per process from the environment by `process::service_main`:
//!
//! - `ATELIER_TLS_CERT_FILE` and `ATELIER_TLS_KEY_FILE` (PEM): this process's certificate
//!   chain and key. With them its gRPC port serves TLS only, and it presents the
//!   certificate when it calls another service over `https://`.
//! - `ATELIER_TLS_CA_FILE` (PEM): the CA of the mesh. Calls to `https://` URLs verify the
//!   server's certificate against it, and an internal port (every one but the edge's
//!   public API) then admits only clients holding a certificate it signed: mutual TLS.
//!   The edge's public port never asks browsers for a certificate.
//!
//! Whether a call uses TLS is the URL's scheme: `https://` or `http://`. With none of
//! these set, everything is plaintext, as behind a service mesh (Linkerd, Istio) whose
//! sidecars add mTLS between pods instead.

use std::path::Path;
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use crate::config::{ConfigError, optional_var};

pub const CERT_FILE: &str = "ATELIER_TLS_CERT_FILE";
pub const KEY_FILE: &str = "ATELIER_TLS_KEY_FILE";
pub const CA_FILE: &str = "ATELIER_TLS_CA_FILE";

/// Which port a server is: the edge's public API, or a port only services call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Public,
    Internal,
}

/// The certificate material of one process.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// Certificate chain and private key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The mesh's CA, PEM.
    ca: Option<Vec<u8>>,
}

impl TlsConfig {
    /// Reads the three variables; the files are read now, so a wrong path stops the
    /// process before it binds.
    pub fn from_env() -> Result<Self, ConfigError> {
        let cert: Option<String> = optional_var(CERT_FILE)?;
        let key: Option<String> = optional_var(KEY_FILE)?;
        let ca: Option<String> = optional_var(CA_FILE)?;
        let read = |name: &str, path: &str| {
            let pem = std::fs::read(path).map_err(|err| ConfigError::new(name, path, err))?;
            if !pem.windows(11).any(|window| window == b"-----BEGIN ") {
                return Err(ConfigError::new(name, path, "not a PEM file"));
            }
            Ok(pem)
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(CERT_FILE, &cert)?, read(KEY_FILE, &key)?)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    CERT_FILE,
                    cert,
                    format!("set {KEY_FILE} too"),
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    KEY_FILE,
                    key,
                    format!("set {CERT_FILE} too"),
                ));
            }
        };
        let ca = ca.map(|path| read(CA_FILE, &path)).transpose()?;
        Ok(Self { identity, ca })
    }

    /// The material in these files (tests and tools).
    pub fn from_files(cert: &Path, key: &Path, ca: Option<&Path>) -> std::io::Result<Self> {
        Ok(Self {
            identity: Some((std::fs::read(cert)?, std::fs::read(key)?)),
            ca: ca.map(std::fs::read).transpose()?,
        })
    }

    /// Whether this process has a certificate, so its ports serve TLS.
    pub fn serves_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// `builder` serving TLS when this process has a certificate, demanding a client
    /// certificate signed by the mesh's CA on an internal port when there is one.
    pub fn serve(&self, builder: Server, port: Port) -> anyhow::Result<Server> {
        let Some((cert, key)) = &self.identity else {
            return Ok(builder);
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let (Port::Internal, Some(ca)) = (port, &self.ca) {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        builder
            .tls_config(tls)
            .map_err(|err| anyhow::anyhow!("TLS settings ({CERT_FILE}, {KEY_FILE}): {err}"))
    }

    /// `endpoint` (for `origin`, the configured URL) over TLS when the URL is `https://`:
    /// the server's certificate checked against the mesh's CA for the URL's host, this
    /// process's certificate presented.
    pub fn client(&self, endpoint: Endpoint, origin: &http::Uri) -> anyhow::Result<Endpoint> {
        if origin.scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let ca = self.ca.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{origin} is https: set {CA_FILE} to the CA that signed its certificate"
            )
        })?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(origin.host().unwrap_or_default());
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint
            .tls_config(tls)
            .map_err(|err| anyhow::anyhow!("TLS settings for {origin}: {err}"))
    }
}

static PROCESS_TLS: OnceLock<TlsConfig> = OnceLock::new();

/// Sets this process's TLS settings; the first call wins (`service_main` makes it).
pub fn set(tls: TlsConfig) {
    let _ = PROCESS_TLS.set(tls);
}

/// This process's TLS settings: none unless [`set`] was called.
pub fn current() -> &'static TlsConfig {
    PROCESS_TLS.get_or_init(TlsConfig::default)
}
