//! Queries of the outbox of `balance_changed` (the table `cmt_balance_changed`): the
//! events committed with their transfers and not yet acknowledged by Kafka, and the
//! advisory lock that makes one instance their publisher. See [`crate::outbox`] for
//! why their order is each account's commit order.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Text};

use crate::domain::BalanceChange;

/// The channel on which a transaction that wrote events wakes the publisher when it
/// runs in another instance.
const CHANNEL: &str = "command_handler_outbox";

/// The advisory lock (two-key form) held by the publisher's session: one per database.
const LOCK: &str = "hashtext('command-handler'), hashtext('balance_changed publisher')";

/// An event in the outbox: its place in commit order and the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    pub seq: i64,
    pub event: BalanceChange,
}

/// Becomes the publisher if no other session is: true when this session holds the
/// lock (it keeps it until it ends or [`resign`]s).
pub fn try_lead(conn: &mut PgConnection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let row: Locked = diesel::sql_query(format!("SELECT pg_try_advisory_lock({LOCK}) AS locked"))
        .get_result(conn)?;
    Ok(row.locked)
}

/// Has PostgreSQL notice within about a minute when this session's host is gone (TCP
/// keepalive), rather than after the system's default of hours, so that the lock it
/// holds passes on. No effect over a Unix socket.
pub fn detect_a_lost_client_soon(conn: &mut PgConnection) -> QueryResult<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(
        "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; \
         SET tcp_keepalives_count = 3",
    )
}

/// Lets another session become the publisher.
pub fn resign(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_advisory_unlock({LOCK})")).execute(conn)?;
    Ok(())
}

/// Subscribes this session to the wake-ups of other instances' transactions.
pub fn listen(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("LISTEN {CHANNEL}")).execute(conn)?;
    Ok(())
}

/// Wakes the publisher listening in another instance once this transaction commits
/// (PostgreSQL delivers a notification only on commit, and folds repeated ones).
pub fn wake_publisher(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("NOTIFY {CHANNEL}")).execute(conn)?;
    Ok(())
}

/// True when another instance's transaction woke this session since the last call.
/// Reads only what already arrived; does not wait.
pub fn woken(conn: &mut PgConnection) -> QueryResult<bool> {
    let mut woken = false;
    for notification in conn.notifications_iter() {
        notification?;
        woken = true;
    }
    Ok(woken)
}

/// Deletes the events Kafka acknowledged (`published`) and reads the next `limit`
/// others in `seq` order, in one round trip. The delete and the read see the same
/// snapshot, so the read leaves out `published` itself.
pub fn take_published_and_read_next(
    conn: &mut PgConnection,
    published: &[i64],
    limit: i64,
) -> QueryResult<Vec<OutboxEvent>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        iban: String,
        #[diesel(sql_type = BigInt)]
        new_balance: i64,
        #[diesel(sql_type = BigInt)]
        changed_by: i64,
        #[diesel(sql_type = Bytea)]
        from_to: Vec<u8>,
        #[diesel(sql_type = Bytea)]
        description: Vec<u8>,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "WITH published AS (DELETE FROM cmt_balance_changed WHERE seq = ANY($1)) \
         SELECT seq, iban, new_balance, changed_by, from_to, description \
         FROM cmt_balance_changed WHERE seq <> ALL($1) ORDER BY seq LIMIT $2",
    )
    .bind::<Array<BigInt>, _>(published)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    // Written from Rust strings, so valid UTF-8 unless edited by hand.
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    Ok(rows
        .into_iter()
        .map(|row| OutboxEvent {
            seq: row.seq,
            event: BalanceChange {
                iban: row.iban,
                new_balance: row.new_balance,
                changed_by: row.changed_by,
                from_to: text(row.from_to),
                description: text(row.description),
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::db::apply::{Wake, apply_account_creations, apply_transfers};
    use crate::db::test_database::TestDatabase;
    use crate::domain::{
        AccountCreationCommand, AccountCreationOutcome, AccountType, RecordPosition, Transfer,
        TransferCommand,
    };

    fn deposit(iban: &str, amount: i64) -> TransferCommand {
        TransferCommand {
            id: Uuid::new_v4(),
            read_at: RecordPosition {
                partition: 0,
                offset: 0,
            },
            transfer: Transfer {
                token: String::new(),
                amount,
                from: "cash".into(),
                to: iban.into(),
                description: format!("deposit of {amount}"),
            },
        }
    }

    fn open(conn: &mut PgConnection) -> String {
        let command = AccountCreationCommand {
            id: Uuid::new_v4(),
            account_type: AccountType::Auto,
        };
        match &apply_account_creations(conn, &[command]).unwrap()[..] {
            [AccountCreationOutcome::Confirmed { iban, .. }] => iban.clone(),
            other => panic!("not confirmed: {other:?}"),
        }
    }

    #[test]
    fn events_are_read_in_commit_order_until_acknowledged() {
        let mut db = TestDatabase::new("outbox_order");
        let conn = &mut db.conn;
        let iban = open(conn);
        for amount in [1, 2, 3] {
            apply_transfers(conn, &[deposit(&iban, amount)], Wake::InThisInstance).unwrap();
        }
        let balances = |events: &[OutboxEvent]| -> Vec<i64> {
            events.iter().map(|e| e.event.new_balance).collect()
        };
        let first = take_published_and_read_next(conn, &[], 2).unwrap();
        assert_eq!(balances(&first), [1, 3]);
        // Not acknowledged: read again, in the same order.
        assert_eq!(take_published_and_read_next(conn, &[], 2).unwrap(), first);
        // The first acknowledged: gone, and left out of the same read.
        let rest = take_published_and_read_next(conn, &[first[0].seq], 10).unwrap();
        assert_eq!(balances(&rest), [3, 6]);
        let seqs: Vec<i64> = rest.iter().map(|e| e.seq).collect();
        assert!(
            take_published_and_read_next(conn, &seqs, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn one_session_at_a_time_is_the_publisher() {
        let mut db = TestDatabase::new("outbox_lock");
        let mut other = db.other_connection();
        assert!(try_lead(&mut db.conn).unwrap());
        assert!(!try_lead(&mut other).unwrap(), "taken");
        resign(&mut db.conn).unwrap();
        assert!(try_lead(&mut other).unwrap(), "free again");
        drop(other);
        // The session ended: the lock goes with it, once its server process is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !try_lead(&mut db.conn).unwrap() {
            assert!(std::time::Instant::now() < deadline, "still held");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_commit_in_another_session_wakes_the_listener() {
        let mut db = TestDatabase::new("outbox_wake");
        let mut writer = db.other_connection();
        let iban = open(&mut writer);
        listen(&mut db.conn).unwrap();
        assert!(!woken(&mut db.conn).unwrap());
        apply_transfers(&mut writer, &[deposit(&iban, 5)], Wake::InThisInstance).unwrap();
        assert!(
            !woken(&mut db.conn).unwrap(),
            "the local publisher is woken in process"
        );
        apply_transfers(&mut writer, &[deposit(&iban, 5)], Wake::ElsewhereToo).unwrap();
        // Delivered asynchronously: wait for it with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !woken(&mut db.conn).unwrap() {
            assert!(std::time::Instant::now() < deadline, "no notification");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
