//! A database of its own for a unit test, on the local stack's PostgreSQL (found through
//! the `OPEN_BANK_STACK_ENV` file that `dev/test` and `dev/stack up` write): created,
//! migrated, and dropped when the test is done.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use super::migrations::run_migrations;

pub(crate) struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
    pub conn: PgConnection,
}

impl TestDatabase {
    pub fn new(test: &str) -> TestDatabase {
        let env_file = std::env::var("OPEN_BANK_STACK_ENV").unwrap_or_else(|_| {
            panic!(
                "the database unit tests need PostgreSQL: run them with dev/test, or start \
                 the stack with `dev/stack up DIR` and set OPEN_BANK_STACK_ENV=DIR/env"
            )
        });
        let text = std::fs::read_to_string(&env_file)
            .unwrap_or_else(|e| panic!("the local stack is not running ({env_file}: {e})"));
        let admin_url = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("export TEST_ADMIN_DATABASE_URL="))
            .unwrap_or_else(|| panic!("{env_file} has no TEST_ADMIN_DATABASE_URL"))
            .to_string();
        let name = format!("unit_{test}_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let (server, _) = admin_url
            .rsplit_once('/')
            .expect("a URL with a database name");
        let url = format!("{server}/{name}");
        let mut conn = PgConnection::establish(&url)
            .unwrap_or_else(|e| panic!("cannot reach database {name}: {e}"));
        run_migrations(&mut conn).unwrap_or_else(|e| panic!("migrations failed: {e}"));
        TestDatabase {
            admin_url,
            name,
            url,
            conn,
        }
    }

    /// A second session on the same database.
    pub fn other_connection(&self) -> PgConnection {
        PgConnection::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot reach database {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}
