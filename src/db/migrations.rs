//! The embedded migrations, run at start-up by one instance at a time.

use diesel::dsl::sql;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

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
