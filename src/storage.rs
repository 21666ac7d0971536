//! PostgreSQL: the connection pool, the embedded migrations, and small query functions
//! over `&mut PgConnection`. Transactions are owned by the caller ([`crate::handler`]).

use std::collections::HashMap;
use std::time::Duration;

use diesel::dsl::sql;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::{Array, BigInt, Bool, Text};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use uuid::Uuid;

use crate::rules::{
    Account, AccountCreationOutcome, AccountType, BalanceChange, Iban, NEW_ACCOUNT_AMOUNT,
    NEW_ACCOUNT_LIMIT,
};
use crate::schema::{balance, cac, cmt, cmt_balance_changed};

pub type PgPool = Pool<ConnectionManager<PgConnection>>;
pub type Connection = diesel::r2d2::PooledConnection<ConnectionManager<PgConnection>>;

/// The connection pool, with connection errors scrubbed of the password: libpq quotes
/// parts of a connection string it cannot parse, and r2d2 logs connection failures.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
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
            .connection_timeout(Duration::from_secs(5))
            .error_handler(Box::new(ScrubbedErrors {
                password: password.clone(),
            }))
            .build_unchecked(ConnectionManager::new(database_url));
        Database { pool, password }
    }

    pub fn connection(&self) -> Result<Connection, String> {
        self.pool
            .get()
            .map_err(|e| scrub(&e.to_string(), self.password.as_deref()))
    }

    /// Whether the database answers a query within `timeout` (readiness probe).
    pub fn reachable(&self, timeout: Duration) -> Result<(), String> {
        let mut conn = self
            .pool
            .get_timeout(timeout)
            .map_err(|e| scrub(&e.to_string(), self.password.as_deref()))?;
        diesel::select(sql::<diesel::sql_types::Integer>("1"))
            .get_result::<i32>(&mut conn)
            .map(drop)
            .map_err(|e| scrub(&e.to_string(), self.password.as_deref()))
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

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialises migrations between handler instances starting at the same moment.
const MIGRATION_LOCK_KEY: i64 = 0x6f70656e_62616e6b; // "openbank"

/// Runs the pending embedded migrations under an advisory lock and returns their names.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>, String> {
    let lock = |conn: &mut PgConnection, function: &str| {
        diesel::select(sql::<Bool>(&format!(
            "{function}({MIGRATION_LOCK_KEY}) IS NOT NULL"
        )))
        .get_result::<bool>(conn)
        .map_err(|e| format!("{function}: {e}"))
    };
    lock(conn, "pg_advisory_lock")?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| format!("migration failed: {e}"));
    lock(conn, "pg_advisory_unlock")?;
    applied
}

// ---------------------------------------------------------------- account creation

/// What `cac` recorded for these command ids: the answers to give again.
pub fn recorded_account_creations(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, AccountCreationOutcome>> {
    #[derive(Queryable, Selectable)]
    #[diesel(table_name = cac)]
    struct CacRow {
        uuid: Uuid,
        iban: Option<String>,
        token: Option<String>,
        account_type: Option<String>,
        reason: Option<String>,
    }
    let rows: Vec<CacRow> = cac::table
        .filter(cac::uuid.eq_any(ids))
        .select(CacRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |CacRow {
                 uuid,
                 iban,
                 token,
                 account_type,
                 reason,
             }| {
                let recorded = AccountCreationOutcome::recorded(
                    reason,
                    iban,
                    token,
                    account_type.as_deref().and_then(AccountType::parse),
                );
                (uuid, recorded)
            },
        )
        .collect())
}

/// Which of these IBANs already have a `balance` row.
pub fn existing_ibans(conn: &mut PgConnection, ibans: &[&str]) -> QueryResult<Vec<String>> {
    balance::table
        .filter(balance::iban.eq_any(ibans))
        .select(balance::iban)
        .load(conn)
}

#[derive(Insertable)]
#[diesel(table_name = balance)]
pub struct NewBalance<'a> {
    pub iban: &'a str,
    pub token: &'a str,
    pub amount: i64,
    pub account_type: &'a str,
    pub lmt: i64,
}

impl<'a> NewBalance<'a> {
    pub fn new_account(iban: &'a str, token: &'a str, account_type: AccountType) -> Self {
        NewBalance {
            iban,
            token,
            amount: NEW_ACCOUNT_AMOUNT,
            account_type: account_type.as_str(),
            lmt: NEW_ACCOUNT_LIMIT,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = cac)]
pub struct NewAccountCreation<'a> {
    pub uuid: Uuid,
    pub iban: Option<&'a str>,
    pub token: Option<&'a str>,
    pub account_type: Option<&'a str>,
    pub reason: Option<&'a str>,
}

pub fn insert_balances(conn: &mut PgConnection, rows: &[NewBalance<'_>]) -> QueryResult<usize> {
    diesel::insert_into(balance::table)
        .values(rows)
        .execute(conn)
}

pub fn insert_account_creations(
    conn: &mut PgConnection,
    rows: &[NewAccountCreation<'_>],
) -> QueryResult<usize> {
    diesel::insert_into(cac::table).values(rows).execute(conn)
}

// ---------------------------------------------------------------- money transfer

/// Where in Kafka a command was read: partition and offset of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedTransfer {
    pub reason: Option<String>,
    pub first_seen_at: Option<RecordPosition>,
}

pub fn recorded_transfers(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, RecordedTransfer>> {
    #[derive(Queryable, Selectable)]
    #[diesel(table_name = cmt)]
    struct CmtRow {
        uuid: Uuid,
        reason: Option<String>,
        source_partition: Option<i32>,
        source_offset: Option<i64>,
    }
    let rows: Vec<CmtRow> = cmt::table
        .filter(cmt::uuid.eq_any(ids))
        .select(CmtRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |CmtRow {
                 uuid,
                 reason,
                 source_partition,
                 source_offset,
             }| {
                let first_seen_at = source_partition
                    .zip(source_offset)
                    .map(|(partition, offset)| RecordPosition { partition, offset });
                (
                    uuid,
                    RecordedTransfer {
                        reason,
                        first_seen_at,
                    },
                )
            },
        )
        .collect())
}

/// The BalanceChanged events recorded for these transfers, in their original order.
pub fn recorded_balance_changes(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Vec<BalanceChange>>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    #[derive(Queryable, Selectable)]
    #[diesel(table_name = cmt_balance_changed)]
    struct EventRow {
        cmt_uuid: Uuid,
        iban: String,
        new_balance: i64,
        changed_by: i64,
        from_to: Vec<u8>,
        description: Vec<u8>,
    }
    let rows: Vec<EventRow> = cmt_balance_changed::table
        .filter(cmt_balance_changed::cmt_uuid.eq_any(ids))
        .order((cmt_balance_changed::cmt_uuid, cmt_balance_changed::position))
        .select(EventRow::as_select())
        .load(conn)?;
    let mut events: HashMap<Uuid, Vec<BalanceChange>> = HashMap::new();
    for EventRow {
        cmt_uuid: uuid,
        iban,
        new_balance,
        changed_by,
        from_to,
        description,
    } in rows
    {
        // Written from Rust strings, so valid UTF-8 unless edited by hand.
        let text = |bytes: Vec<u8>| {
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        events.entry(uuid).or_default().push(BalanceChange {
            iban,
            new_balance,
            changed_by,
            from_to: text(from_to),
            description: text(description),
        });
    }
    Ok(events)
}

/// Loads and locks (`FOR UPDATE`) the accounts with these IBANs. Rows are locked in
/// IBAN order, so two transactions locking overlapping sets cannot deadlock.
pub fn lock_accounts(
    conn: &mut PgConnection,
    ibans: &[&str],
) -> QueryResult<HashMap<Iban, Account>> {
    let rows: Vec<(String, String, i64, i64)> = balance::table
        .filter(balance::iban.eq_any(ibans))
        .order(balance::iban)
        .for_update()
        .select((balance::iban, balance::token, balance::amount, balance::lmt))
        .load(conn)?;
    Ok(rows
        .into_iter()
        // The caller asked only for valid IBANs, so every row parses.
        .filter_map(|(iban, token, amount, lmt)| {
            let iban = Iban::parse(&iban)?;
            Some((
                iban.clone(),
                Account {
                    iban,
                    token,
                    amount,
                    lmt,
                },
            ))
        })
        .collect())
}

/// Sets the amounts of these (locked) accounts in one statement.
pub fn update_amounts(
    conn: &mut PgConnection,
    ibans: &[&str],
    amounts: &[i64],
) -> QueryResult<usize> {
    if ibans.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE balance SET amount = changed.amount \
         FROM unnest($1::text[], $2::bigint[]) AS changed(iban, amount) \
         WHERE balance.iban = changed.iban",
    )
    .bind::<Array<Text>, _>(ibans)
    .bind::<Array<BigInt>, _>(amounts)
    .execute(conn)
}

#[derive(Insertable)]
#[diesel(table_name = cmt)]
pub struct NewTransfer<'a> {
    pub uuid: Uuid,
    pub reason: Option<&'a str>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = cmt_balance_changed)]
pub struct NewBalanceChange<'a> {
    pub cmt_uuid: Uuid,
    pub position: i16,
    pub iban: &'a str,
    pub new_balance: i64,
    pub changed_by: i64,
    pub from_to: &'a [u8],
    pub description: &'a [u8],
}

pub fn insert_transfers(conn: &mut PgConnection, rows: &[NewTransfer<'_>]) -> QueryResult<usize> {
    diesel::insert_into(cmt::table).values(rows).execute(conn)
}

pub fn insert_balance_changes(
    conn: &mut PgConnection,
    rows: &[NewBalanceChange<'_>],
) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    diesel::insert_into(cmt_balance_changed::table)
        .values(rows)
        .execute(conn)
}

/// Forgets the events of transfers whose BalanceChanged records Kafka acknowledged: from
/// now on a redelivery of those commands (say, after an offset reset) answers them
/// without publishing their events again.
pub fn forget_published_balance_changes(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> QueryResult<usize> {
    diesel::delete(cmt_balance_changed::table.filter(cmt_balance_changed::cmt_uuid.eq_any(ids)))
        .execute(conn)
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
