//! [`PostgresConfig`]: where the database is and how lockd uses it.

use std::fmt;
use std::time::Duration;

use lockcore::{Limits, LockError};

/// Longest schema name accepted, so that the NOTIFY channel `lockd_free_<schema>` stays within
/// PostgreSQL's 63-byte identifier limit.
pub const MAX_SCHEMA_LEN: usize = 48;

/// Largest `max_ttl` / `max_wait` accepted: 100 years.
const MAX_DURATION_LIMIT: Duration = Duration::from_secs(100 * 366 * 24 * 60 * 60);

/// Configuration of a [`PostgresStore`](crate::PostgresStore).
///
/// Deserializes with defaults for every missing field; durations are whole milliseconds in the
/// serialized form. `Debug` shows the URL with its password replaced by `***`.
///
/// ```
/// use backend_postgres::PostgresConfig;
/// let config = PostgresConfig::from_url("postgres://lockd:s3cret@db.internal:5432/locks");
/// assert_eq!(config.schema, "lockd");
/// assert!(config.run_migrations);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// libpq-style URL, e.g. `postgres://user:password@host:5432/db?sslmode=require`.
    pub url: String,
    /// Schema holding lockd's table, functions and migration history (default `lockd`):
    /// lower-case ASCII letters, digits and `_`, not starting with a digit, at most
    /// [`MAX_SCHEMA_LEN`] bytes. Created if missing when migrations run.
    pub schema: String,
    /// Whether [`connect`](crate::PostgresStore::connect) applies the embedded migrations
    /// (default `true`). Turn off when a DBA applies them; lockd then expects them in place.
    pub run_migrations: bool,
    /// Largest TTL and wait callers may ask for.
    pub limits: Limits,
    /// Most pooled connections this process opens (default 10), plus one for LISTEN.
    pub max_connections: u32,
    /// How long to wait for a connection, new or pooled, before an operation fails as
    /// unavailable (default 5 s).
    #[serde(with = "lockcore::serde_millis")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every lockd statement (default 5 s). A statement that
    /// hits it (for example stuck behind a row lock) fails as unavailable and grants nothing.
    #[serde(with = "lockcore::serde_millis")]
    pub statement_timeout: Duration,
    /// How long after its last grant an object nobody holds or waits for keeps its row (and
    /// so its fence) before the reaper deletes it (default 10 min). Deleting is safe once the
    /// database clock has moved past the row's fence; a longer period also tolerates the
    /// database clock stepping back by that much.
    #[serde(with = "lockcore::serde_millis")]
    pub reap_after: Duration,
    /// How often this process runs the reaper (default 1 min; zero turns it off).
    #[serde(with = "lockcore::serde_millis")]
    pub reap_interval: Duration,
    /// `application_name` of lockd's connections, as shown in `pg_stat_activity`
    /// (default `lockd`).
    pub application_name: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            schema: "lockd".to_owned(),
            run_migrations: true,
            limits: Limits::default(),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            reap_after: Duration::from_secs(600),
            reap_interval: Duration::from_secs(60),
            application_name: "lockd".to_owned(),
        }
    }
}

impl PostgresConfig {
    /// Defaults for everything but the URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Refuses a configuration lockd cannot run with, naming the field.
    pub fn check(&self) -> Result<(), LockError> {
        check_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err(LockError::invalid_argument(
                "max_connections",
                "must be at least 1",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(LockError::invalid_argument(
                "connect_timeout",
                "must be positive",
            ));
        }
        // Far beyond any sensible lease, and well inside PostgreSQL's interval and timestamp
        // ranges, so TTL and wait arithmetic in SQL cannot overflow.
        if self.limits.max_ttl > MAX_DURATION_LIMIT {
            return Err(LockError::invalid_argument(
                "max_ttl",
                "must be at most 100 years",
            ));
        }
        if self.limits.max_wait > MAX_DURATION_LIMIT {
            return Err(LockError::invalid_argument(
                "max_wait",
                "must be at most 100 years",
            ));
        }
        if self.statement_timeout < Duration::from_millis(1) {
            return Err(LockError::invalid_argument(
                "statement_timeout",
                "must be at least 1 ms",
            ));
        }
        if self.application_name.len() > 63 || !self.application_name.is_ascii() {
            return Err(LockError::invalid_argument(
                "application_name",
                "must be at most 63 ASCII characters",
            ));
        }
        Ok(())
    }

    /// The URL with any password replaced by `***`, for logs and `Debug`.
    pub fn redacted_url(&self) -> String {
        lockcore::redact_url(&self.url)
    }

    /// The NOTIFY channel releases are announced on.
    pub(crate) fn channel(&self) -> String {
        format!("lockd_free_{}", self.schema)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .field("run_migrations", &self.run_migrations)
            .field("limits", &self.limits)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("reap_after", &self.reap_after)
            .field("reap_interval", &self.reap_interval)
            .field("application_name", &self.application_name)
            .finish()
    }
}

fn check_schema(schema: &str) -> Result<(), LockError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > MAX_SCHEMA_LEN || schema.starts_with("pg_") {
        return Err(LockError::invalid_argument(
            "schema",
            format!(
                "must be 1 to {MAX_SCHEMA_LEN} lower-case ASCII letters, digits or `_`, \
                 not starting with a digit or `pg_`"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords_in_user_info_and_query() {
        let config = PostgresConfig::from_url(
            "postgres://u:hunter2@h:5432/db?password=swordfish&sslmode=require",
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("swordfish"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
        assert!(shown.contains("u:***@h"), "{shown}");
    }

    #[test]
    fn missing_fields_take_defaults_when_deserialized() {
        let config: PostgresConfig =
            serde_json::from_str(r#"{"url":"postgres://h/db","statement_timeout":250}"#)
                .expect("valid config");
        assert_eq!(config.url, "postgres://h/db");
        assert_eq!(config.schema, "lockd");
        assert!(config.run_migrations);
        assert_eq!(config.statement_timeout, Duration::from_millis(250));
        assert_eq!(
            config.max_connections,
            PostgresConfig::default().max_connections
        );
    }

    #[test]
    fn schema_names_that_could_escape_quoting_are_refused() {
        for bad in [
            "",
            "Lockd",
            "1abc",
            "a-b",
            "a\"b",
            "pg_catalog",
            &"a".repeat(49),
        ] {
            let config = PostgresConfig {
                schema: bad.to_owned(),
                ..PostgresConfig::default()
            };
            assert!(
                matches!(
                    config.check(),
                    Err(LockError::InvalidArgument {
                        field: "schema",
                        ..
                    })
                ),
                "{bad:?} was accepted"
            );
        }
        for good in ["lockd", "_x", "lockd_test_0a9f", &"a".repeat(48)] {
            let config = PostgresConfig {
                schema: good.to_owned(),
                ..PostgresConfig::default()
            };
            assert!(config.check().is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn limits_beyond_what_sql_intervals_hold_are_refused() {
        let config = PostgresConfig {
            limits: Limits::new(Duration::MAX, Duration::from_secs(1)),
            ..PostgresConfig::default()
        };
        assert!(matches!(
            config.check(),
            Err(LockError::InvalidArgument {
                field: "max_ttl",
                ..
            })
        ));
        let config = PostgresConfig {
            limits: Limits::new(Duration::from_secs(1), Duration::MAX),
            ..PostgresConfig::default()
        };
        assert!(matches!(
            config.check(),
            Err(LockError::InvalidArgument {
                field: "max_wait",
                ..
            })
        ));
        assert!(PostgresConfig::default().check().is_ok());
    }

    #[test]
    fn a_pool_without_connections_is_refused() {
        let config = PostgresConfig {
            max_connections: 0,
            ..PostgresConfig::default()
        };
        assert!(config.check().is_err());
    }
}
