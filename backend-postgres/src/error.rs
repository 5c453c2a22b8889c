//! Turning database failures into [`LockError`]s.

use lockcore::LockError;

/// The backend name every error of this crate carries.
pub(crate) const BACKEND: &str = "postgres";

/// Maps a sqlx error to what a lockd caller can act on.
///
/// Anything that means "the database could not answer this now" (I/O, TLS, pool exhaustion or
/// timeout, a server shutting down or restarting, a statement timeout, lock and serialization
/// conflicts, missing lockd schema objects) is [`LockError::Unavailable`]: nothing was granted and
/// trying again later may succeed. Anything else is a bug or an unexpected state and becomes
/// [`LockError::Internal`].
pub(crate) fn from_sqlx(error: sqlx::Error) -> LockError {
    use sqlx::Error as E;
    match &error {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Configuration(_) => LockError::unavailable(BACKEND, &error),
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if is_unavailable_sqlstate(&code) {
                LockError::unavailable(BACKEND, format!("{error} (SQLSTATE {code})"))
            } else {
                LockError::Internal(format!("postgres: {error} (SQLSTATE {code})"))
            }
        }
        _ => LockError::Internal(format!("postgres: {error}")),
    }
}

/// SQLSTATEs meaning the database cannot serve the request now (see PostgreSQL's appendix A).
fn is_unavailable_sqlstate(code: &str) -> bool {
    let class = code.get(..2).unwrap_or("");
    matches!(
        class,
        // connection exception, insufficient resources, operator intervention (shutdown,
        // restart, statement timeout / cancel), system error, transaction rollback
        // (serialization failure, deadlock)
        "08" | "53" | "57" | "58" | "40"
    ) || matches!(
        code,
        // undefined table / function / schema: lockd's migrations are not (yet) in place
        "42P01" | "42883" | "3F000"
        // lock_not_available, read-only transaction (a standby after failover)
        | "55P03" | "25006"
    )
}

/// The error for an operation that did not finish within lockd's own deadline.
pub(crate) fn timed_out(what: &str) -> LockError {
    LockError::unavailable(BACKEND, format!("{what} did not finish in time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_timeouts_are_unavailable() {
        for code in [
            "08006", "57P01", "57P03", "57014", "53300", "40001", "42P01", "25006",
        ] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        assert!(matches!(
            from_sqlx(sqlx::Error::PoolTimedOut),
            LockError::Unavailable {
                backend: "postgres",
                ..
            }
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            from_sqlx(sqlx::Error::Io(io)),
            LockError::Unavailable { .. }
        ));
    }

    #[test]
    fn constraint_and_syntax_errors_are_internal() {
        for code in ["23505", "42601", "22P02", ""] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        assert!(matches!(
            from_sqlx(sqlx::Error::RowNotFound),
            LockError::Internal(_)
        ));
    }
}
