//! PostgreSQL over TLS: the handler connects with `sslmode=verify-full` as a role that
//! may only connect over TLS, and a server certificate from another CA is refused with
//! a clear message; the password shows nowhere.

use std::path::Path;

use diesel::prelude::*;

use crate::harness::*;

/// A URL for the TLS-only role, checking the server's certificate against `ca`.
fn tls_url(env: &TestEnv, ca: &str) -> String {
    let stack = env.stack;
    format!(
        "postgres://{}:{}@localhost:{}/{}?sslmode=verify-full&sslrootcert={ca}",
        stack.db_tls_role, stack.db_tls_password, stack.db_port, env.database
    )
}

#[test]
fn the_handler_works_over_tls_with_the_servers_certificate_checked() {
    let mut env = TestEnv::new("db_tls");
    let role = env.stack.db_tls_role.clone();
    diesel::sql_query(format!(
        "ALTER DATABASE \"{}\" OWNER TO {role}",
        env.database
    ))
    .execute(&mut env.stack.admin_connection())
    .unwrap();
    let url = tls_url(&env, &env.stack.tls.ca);
    let handler = env.start_handler(&[("DATABASE_URL", &url)]);
    let (iban, _) = env.open_account();
    assert_eq!(env.transfer(&TransferCmd::new("", 12, "cash", &iban)), None);
    assert_eq!(env.amount(&iban), Some(12));

    // Its connections are encrypted (and the role could not have connected otherwise).
    let encrypted = count(
        &mut env.stack.admin_connection(),
        &format!(
            "SELECT count(*) AS n FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE usename = '{role}' AND ssl"
        ),
    );
    assert!(encrypted > 0, "no TLS connection of {role}");
    let log = env.handler(handler).log();
    assert!(!log.contains(&env.stack.db_tls_password), "{log}");
    env.handler(handler).stop_cleanly();
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_with_a_clear_message() {
    let env = TestEnv::new("db_rogue_ca");
    let rogue_ca = Path::new(&env.stack.tls.ca)
        .with_file_name("rogue-ca.pem")
        .to_string_lossy()
        .into_owned();
    let (status, report) = env.run_check(&[("DATABASE_URL", &tls_url(&env, &rogue_ca))]);
    assert_eq!(status.code(), Some(1), "{report}");
    let line = report
        .lines()
        .find(|line| line.starts_with("database: FAILED"))
        .unwrap_or_else(|| panic!("no failed database line in\n{report}"));
    assert!(line.contains("certificate verify failed"), "{line}");
    assert!(!report.contains(&env.stack.db_tls_password), "{report}");

    // Without TLS the role is turned away by the server.
    let plain = tls_url(&env, &env.stack.tls.ca).replace("sslmode=verify-full", "sslmode=disable");
    let (status, report) = env.run_check(&[("DATABASE_URL", &plain)]);
    assert_eq!(status.code(), Some(1), "{report}");
    assert!(
        report.contains("no encryption") || report.contains("pg_hba.conf"),
        "{report}"
    );
}
