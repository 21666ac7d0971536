//! PostgreSQL: the connection pool, the embedded migrations, small query functions over
//! `&mut PgConnection` (one module per table group), and the batch transactions that
//! apply commands ([`apply`]), which own the transaction and call the queries.

pub(crate) mod accounts;
pub mod apply;
pub(crate) mod migrations;
pub(crate) mod outbox;
pub(crate) mod schema;
#[cfg(test)]
pub(crate) mod test_database;
pub(crate) mod transfers;

use std::sync::Arc;
use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as QueryError};
use scheduled_thread_pool::ScheduledThreadPool;

/// Why the database did not do what was asked, and so what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had (the database is down or the pool exhausted): the
    /// same work may succeed later. The text is scrubbed of the password.
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] QueryError),
}

/// What the caller should do about a [`DbError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbFailure {
    /// Retry the same work: the database was unreachable, a concurrent transaction got
    /// there first (a unique violation or a serialisation failure), the connection broke.
    Transient,
    /// The same statement will fail again for this data (a check, a not-null or a
    /// foreign key constraint): isolate the command that causes it.
    Permanent,
}

impl DbError {
    pub fn failure(&self) -> DbFailure {
        match self {
            DbError::Unreachable(_) => DbFailure::Transient,
            DbError::Query(QueryError::DatabaseError(kind, _)) => match kind {
                DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::RestrictViolation
                | DatabaseErrorKind::ExclusionViolation => DbFailure::Permanent,
                // Unique violations are races between instances; unknown errors (an
                // administrator's termination, a lock timeout) are taken as passing.
                _ => DbFailure::Transient,
            },
            DbError::Query(
                QueryError::SerializationError(_) | QueryError::QueryBuilderError(_),
            ) => DbFailure::Permanent,
            DbError::Query(_) => DbFailure::Transient,
        }
    }
}

pub(crate) type PgPool = Pool<ConnectionManager<PgConnection>>;
pub(crate) type Connection = diesel::r2d2::PooledConnection<ConnectionManager<PgConnection>>;

/// The connection pool, with connection errors scrubbed of the password: libpq quotes
/// parts of a connection string it cannot parse, and r2d2 logs connection failures.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    /// For sessions of their own ([`Database::session`]); holds the password.
    url: Arc<str>,
    password: Option<String>,
}

impl Database {
    /// A pool that connects lazily: start-up does not fail when the database is still
    /// coming up; the first use retries instead.
    pub fn new(database_url: &str, size: u32) -> Database {
        let password = password_in(database_url);
        let pool = Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            // No `SELECT 1` before every batch (r2d2's default): a connection that broke
            // fails its batch's first query, which is retried (a transient failure) on a
            // fresh connection, since r2d2 drops a broken one when it comes back.
            .test_on_check_out(false)
            // One thread opens connections and reaps idle ones, not r2d2's three: the
            // pool is small and a connection opens in milliseconds.
            .thread_pool(Arc::new(
                ScheduledThreadPool::builder()
                    .num_threads(1)
                    .thread_name_pattern("r2d2-worker-{}")
                    .build(),
            ))
            .connection_timeout(Duration::from_secs(5))
            .error_handler(Box::new(ScrubbedErrors {
                password: password.clone(),
            }))
            .build_unchecked(ConnectionManager::new(database_url));
        Database {
            pool,
            url: database_url.into(),
            password,
        }
    }

    pub fn connection(&self) -> Result<Connection, DbError> {
        self.pool
            .get()
            .map_err(|e| DbError::Unreachable(self.scrub(&e.to_string())))
    }

    /// A connection of its own, outside the pool: for a session whose state must not
    /// pass to another user of the pool (the publisher's advisory lock lives with it).
    pub fn session(&self) -> Result<PgConnection, DbError> {
        use diesel::Connection as _;
        PgConnection::establish(&self.url)
            .map_err(|e| DbError::Unreachable(self.scrub(&e.to_string())))
    }

    /// The text of an error, without the password.
    pub fn scrub(&self, message: &str) -> String {
        scrub(message, self.password.as_deref())
    }

    /// A connection within `timeout` (the probes wait less than the pool's default).
    pub fn connection_within(&self, timeout: Duration) -> Result<Connection, DbError> {
        self.pool
            .get_timeout(timeout)
            .map_err(|e| DbError::Unreachable(self.scrub(&e.to_string())))
    }

    pub fn usage(&self) -> PoolUsage {
        let state = self.pool.state();
        PoolUsage {
            idle: state.idle_connections,
            in_use: state.connections - state.idle_connections,
            max: self.pool.max_size(),
        }
    }
}

/// The pool's connections at one moment.
#[derive(Clone, Copy, Debug)]
pub struct PoolUsage {
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
}

#[derive(Debug)]
struct ScrubbedErrors {
    password: Option<String>,
}

impl r2d2::HandleError<diesel::r2d2::Error> for ScrubbedErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        log::debug!(
            "database connection failed: {}",
            scrub(&error.to_string(), self.password.as_deref())
        );
    }
}

/// The password of a `postgres://user:password@host/db` URL or of a libpq
/// `password='…'` connection string.
fn password_in(database_url: &str) -> Option<String> {
    if let Some(rest) = database_url.split_once("://").map(|(_, rest)| rest) {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let userinfo = authority.rsplit_once('@')?.0;
        return userinfo
            .split_once(':')
            .map(|(_, password)| password.to_string())
            .filter(|p| !p.is_empty());
    }
    let start = database_url.find("password='")? + "password='".len();
    let mut password = String::new();
    let mut chars = database_url[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => password.extend(chars.next()),
            '\'' => break,
            c => password.push(c),
        }
    }
    Some(password).filter(|p| !p.is_empty())
}

fn scrub(message: &str, password: Option<&str>) -> String {
    match password {
        Some(password) => message.replace(password, "<redacted>"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_urls_and_connection_strings() {
        assert_eq!(
            password_in("postgres://u:s3cret@db:5432/x").as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            password_in("postgresql://u:a%zzb@db/x?sslmode=require").as_deref(),
            Some("a%zzb")
        );
        assert_eq!(password_in("postgres://u@db/x"), None);
        assert_eq!(
            password_in(r"host='h' user='u' password='it\'s\\x'").as_deref(),
            Some(r"it's\x")
        );
        assert_eq!(
            scrub("bad token \"a%zzb\"", Some("a%zzb")),
            "bad token \"<redacted>\""
        );
    }
}
