//! Reading typed settings from environment variables with local defaults.
//!
//! Every service parses its whole config before it binds a port, so a typo in a variable
//! stops the process with a message naming the variable (and exit code 64), not a
//! half-started mesh.

use std::fmt::Display;
use std::str::FromStr;

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: &str, value: impl Into<String>, reason: impl Display) -> Self {
        Self {
            name: name.to_owned(),
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

/// The variable parsed as `T`, or `default` when it is unset or empty.
pub fn var_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(optional_var(name)?.unwrap_or(default))
}

/// The variable parsed as `T`, or `None` when it is unset or empty.
pub fn optional_var<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|err| ConfigError::new(name, value, err)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::new(name, "<not unicode>", "not valid UTF-8"))
        }
    }
}

/// A number that must be positive, or `default` when unset: a zero (a cache that keeps
/// nothing, a timeout that fires at once) is a typo, not a setting.
pub fn positive_var(name: &str, default: u64) -> Result<u64, ConfigError> {
    let value = var_or(name, default)?;
    if value == 0 {
        return Err(ConfigError::new(name, "0", "must be positive"));
    }
    Ok(value)
}

/// A comma-separated list, or `default` when unset or empty.
pub fn list_or(name: &str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
    let raw: Option<String> = optional_var(name)?;
    Ok(match raw {
        Some(raw) => raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
        None => default.iter().map(|item| (*item).to_owned()).collect(),
    })
}

/// A secret setting: its `Debug` never prints it, and reading it takes an explicit
/// [`Secret::expose`], so it does not reach a log by accident.
#[derive(Clone)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(std::sync::Arc::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The exit code for a configuration error (EX_USAGE, as in sysexits.h).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variables_take_the_default() {
        let value: u32 = var_or("ATELIER_TEST_SURELY_UNSET_VARIABLE", 7).expect("default");
        assert_eq!(value, 7);
    }

    #[test]
    fn positive_numbers_default_when_unset() {
        assert_eq!(
            positive_var("ATELIER_TEST_SURELY_UNSET_VARIABLE", 3).expect("default"),
            3
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn unparsable_values_name_the_variable() {
        // PATH is always set and is never a number.
        let err = var_or::<u32>("PATH", 1).expect_err("PATH is not a number");
        assert_eq!(err.name, "PATH");
        assert!(err.to_string().contains("PATH"));
    }
}
