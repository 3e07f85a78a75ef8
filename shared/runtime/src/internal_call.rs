//! What a call between Atelier services carries in its metadata, and how both ends handle it.
//!
//! - `x-atelier-service-token`: the service credential. Internal ports refuse calls without
//!   it (UNAUTHENTICATED), so an end user who reaches one cannot act as the edge.
//! - `x-atelier-user-id`: the user on whose behalf the call is made (the JWT subject the
//!   edge verified). Internal services trust it only because the credential came with it.
//! - `traceparent`: the W3C trace context of the calling span.

use std::fmt;
use std::sync::Arc;

use opentelemetry::propagation::Injector;
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Request, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const SERVICE_TOKEN_HEADER: &str = "x-atelier-service-token";
pub const USER_ID_HEADER: &str = "x-atelier-user-id";

/// The shared service credential. Its `Debug` never prints the secret.
#[derive(Clone)]
pub struct ServiceToken(Arc<str>);

/// The service credential of development mode (`ATELIER_ENV=development`): public, so
/// refused anywhere else.
pub const DEVELOPMENT_SERVICE_TOKEN: &str = "atelier-local-service-token";

impl ServiceToken {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(Arc::from(secret.into()))
    }

    /// `ATELIER_SERVICE_TOKEN`, checked like every secret ([`crate::config::secret`])
    /// and for what a header can carry.
    pub fn from_env(
        environment: crate::config::Environment,
    ) -> Result<Self, crate::config::ConfigError> {
        const NAME: &str = "ATELIER_SERVICE_TOKEN";
        let secret = crate::config::secret(NAME, DEVELOPMENT_SERVICE_TOKEN, environment)?;
        let token = Self::new(secret.expose());
        if let Err(err) = OutgoingCall::new(&token) {
            return Err(crate::config::ConfigError::new(NAME, "<hidden>", err));
        }
        Ok(token)
    }

    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

/// Server side: an interceptor that admits only calls carrying the service credential.
#[derive(Clone, Debug)]
pub struct RequireServiceToken(pub ServiceToken);

impl tonic::service::Interceptor for RequireServiceToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(SERVICE_TOKEN_HEADER) {
            Some(value) if self.0.matches(value.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid service credential")),
            None => Err(Status::unauthenticated(format!(
                "internal API: missing {SERVICE_TOKEN_HEADER}"
            ))),
        }
    }
}

/// Client side: an interceptor that adds the service credential and the current span's
/// trace context to every outgoing call.
#[derive(Clone, Debug)]
pub struct OutgoingCall {
    token: AsciiMetadataValue,
}

impl OutgoingCall {
    /// Fails when the token holds characters that cannot travel in a header.
    pub fn new(token: &ServiceToken) -> anyhow::Result<Self> {
        let token = AsciiMetadataValue::try_from(token.0.as_ref())
            .map_err(|_| anyhow::anyhow!("the service token must be printable ASCII"))?;
        Ok(Self { token })
    }
}

impl tonic::service::Interceptor for OutgoingCall {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert(SERVICE_TOKEN_HEADER, self.token.clone());
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(metadata));
        });
        Ok(request)
    }
}

/// Marks `request` as made on behalf of `user_id`.
pub fn on_behalf_of<T>(request: &mut Request<T>, user_id: &str) -> Result<(), Status> {
    let value = AsciiMetadataValue::try_from(user_id)
        .map_err(|_| Status::invalid_argument("user id must be printable ASCII"))?;
    request.metadata_mut().insert(USER_ID_HEADER, value);
    Ok(())
}

/// The user an internal call was made for. Missing means the caller forgot it: that is
/// the calling service's bug, reported as UNAUTHENTICATED rather than guessed.
pub fn caller_user_id<T>(request: &Request<T>) -> Result<String, Status> {
    let value = request
        .metadata()
        .get(USER_ID_HEADER)
        .ok_or_else(|| Status::unauthenticated(format!("missing {USER_ID_HEADER}")))?;
    let user_id = value
        .to_str()
        .map_err(|_| Status::unauthenticated(format!("{USER_ID_HEADER} is not ASCII")))?;
    if user_id.is_empty() || user_id.len() > 255 {
        return Err(Status::unauthenticated(format!(
            "{USER_ID_HEADER} must be 1 to 255 characters"
        )));
    }
    Ok(user_id.to_owned())
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    fn request_with_token(token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(token) = token {
            request.metadata_mut().insert(
                SERVICE_TOKEN_HEADER,
                AsciiMetadataValue::try_from(token).expect("ascii"),
            );
        }
        request
    }

    #[test]
    fn only_the_right_credential_passes() {
        let mut guard = RequireServiceToken(ServiceToken::new("s3cret"));
        assert!(guard.call(request_with_token(Some("s3cret"))).is_ok());
        for presented in [None, Some("s3cre"), Some("s3cret!"), Some("")] {
            let status = guard
                .call(request_with_token(presented))
                .expect_err("must be refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{presented:?}");
        }
    }

    #[test]
    fn the_user_id_round_trips() {
        let mut request = Request::new(());
        on_behalf_of(&mut request, "alice").expect("ascii user");
        assert_eq!(caller_user_id(&request).expect("set"), "alice");
        let status = caller_user_id(&Request::new(())).expect_err("missing");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_secret_is_not_printed() {
        let token = ServiceToken::new("s3cret");
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
