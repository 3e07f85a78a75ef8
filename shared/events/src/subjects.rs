use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Subject and stream names under one prefix (`atelier` in production), and how many
/// servers keep those streams.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
    stream_replicas: usize,
}

impl Subjects {
    /// `prefix` must be one or more NATS tokens of letters, digits, `-` and `_`.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        atelier_runtime::mesh::check_subject_prefix(prefix).map_err(anyhow::Error::msg)?;
        Ok(Self {
            prefix: prefix.to_owned(),
            stream_replicas: atelier_runtime::mesh::DEFAULT_STREAM_REPLICAS,
        })
    }

    /// The names and stream replicas of a mesh's NATS settings.
    pub fn of(nats: &atelier_runtime::mesh::NatsConfig) -> anyhow::Result<Self> {
        Ok(Self::new(&nats.subject_prefix)?.with_stream_replicas(nats.stream_replicas))
    }

    /// The same names, with streams kept by `replicas` servers of a JetStream cluster
    /// (`ATELIER_NATS_STREAM_REPLICAS`, checked by `atelier_runtime::mesh::NatsConfig`).
    #[must_use]
    pub fn with_stream_replicas(mut self, replicas: usize) -> Self {
        self.stream_replicas = replicas;
        self
    }

    /// Servers that keep each stream ([`crate::ensure_streams`] creates them so).
    pub fn stream_replicas(&self) -> usize {
        self.stream_replicas
    }

    /// A subject relative to the prefix (as the outbox stores them) made absolute.
    pub fn absolute(&self, relative: &str) -> String {
        format!("{}.{relative}", self.prefix)
    }

    pub fn generate_jobs(&self) -> String {
        self.absolute(GENERATE_JOBS)
    }

    pub fn title_jobs(&self) -> String {
        self.absolute(TITLE_JOBS)
    }

    /// Where a user's events are stored.
    pub fn user_events(&self, user_id: &str) -> String {
        self.absolute(&user_events(user_id))
    }

    /// Where the stream republishes a user's events for live subscribers.
    pub fn live_user_events(&self, user_id: &str) -> String {
        format!("{}.live.user.{}", self.prefix, user_token(user_id))
    }

    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.stream_stem())
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_stem())
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream names may not hold `.`: the prefix upper-cased with `_` for each dot.
    fn stream_stem(&self) -> String {
        self.prefix.replace(['.', '-'], "_").to_ascii_uppercase()
    }
}

/// Generation jobs, relative to the prefix.
pub const GENERATE_JOBS: &str = "jobs.generate";
/// Title jobs, relative to the prefix.
pub const TITLE_JOBS: &str = "jobs.title";

/// A user's event subject relative to the prefix, as the outbox stores it.
pub fn user_events(user_id: &str) -> String {
    format!("events.user.{}", user_token(user_id))
}

/// User ids are JWT subjects and may hold `.`, `*` or `>`, which NATS reads as subject
/// syntax: base64url keeps every id one safe, reversible token.
fn user_token(user_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let subjects = Subjects::new("test-42.atelier").expect("valid");
        assert_eq!(subjects.generate_jobs(), "test-42.atelier.jobs.generate");
        assert_eq!(subjects.jobs_stream(), "TEST_42_ATELIER_JOBS");
        assert_eq!(subjects.events_stream(), "TEST_42_ATELIER_EVENTS");
        assert_eq!(
            subjects.user_events("a.b@c"),
            format!(
                "test-42.atelier.events.user.{}",
                URL_SAFE_NO_PAD.encode("a.b@c")
            )
        );
        assert!(
            subjects
                .live_user_events("alice")
                .starts_with("test-42.atelier.live.user.")
        );
    }

    #[test]
    fn user_tokens_are_one_safe_token() {
        for user in ["alice", "a.b@example.com", "x*y>z", "üser"] {
            let subject = user_events(user);
            let token = subject.strip_prefix("events.user.").expect("prefix");
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{subject}"
            );
            assert_eq!(
                URL_SAFE_NO_PAD.decode(token).expect("base64url"),
                user.as_bytes()
            );
        }
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for prefix in ["", "a..b", "a.*", "with space", "a>"] {
            assert!(Subjects::new(prefix).is_err(), "{prefix:?}");
        }
    }
}
