//! Queries of money transfers: `cmt` (outcomes by command id), the locked `balance`
//! rows, and `cmt_balance_changed` (events recorded until Kafka acknowledged them).

use std::collections::HashMap;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use uuid::Uuid;

use crate::db::schema::{balance, cmt, cmt_balance_changed};
use crate::domain::transfer::Account;
use crate::domain::{BalanceChange, Iban, RecordPosition};

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

/// Deletes the events left of transfers read from `partition` before `offset`, the
/// offset stored after their batch: their answers and events were acknowledged, so no
/// redelivery needs them, and only a failed [`forget_published_balance_changes`] can
/// have left them.
pub fn sweep_balance_changes_before(
    conn: &mut PgConnection,
    partition: i32,
    offset: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM cmt_balance_changed AS event USING cmt \
         WHERE cmt.uuid = event.cmt_uuid \
         AND cmt.source_partition = $1 AND cmt.source_offset < $2",
    )
    .bind::<diesel::sql_types::Integer, _>(partition)
    .bind::<BigInt, _>(offset)
    .execute(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::apply::{apply_account_creations, apply_transfers};
    use crate::db::test_database::TestDatabase;
    use crate::domain::{
        AccountCreationCommand, AccountCreationOutcome, AccountType, Transfer, TransferCommand,
    };

    fn deposit(iban: &str, partition: i32, offset: i64) -> TransferCommand {
        TransferCommand {
            id: Uuid::new_v4(),
            read_at: RecordPosition { partition, offset },
            transfer: Transfer {
                token: String::new(),
                amount: 1,
                from: "cash".into(),
                to: iban.into(),
                description: "sweep".into(),
            },
        }
    }

    #[test]
    fn the_sweep_takes_only_events_read_before_the_stored_offset_of_their_partition() {
        let mut db = TestDatabase::new("sweep");
        let conn = &mut db.conn;
        let opened = AccountCreationCommand {
            id: Uuid::new_v4(),
            account_type: AccountType::Auto,
        };
        let [AccountCreationOutcome::Confirmed { iban, .. }] =
            &apply_account_creations(conn, &[opened]).unwrap()[..]
        else {
            panic!("no account")
        };
        let (early, late, elsewhere) = (
            deposit(iban, 0, 5),
            deposit(iban, 0, 9),
            deposit(iban, 1, 2),
        );
        apply_transfers(conn, &[early.clone(), late.clone(), elsewhere.clone()], &[]).unwrap();

        assert_eq!(sweep_balance_changes_before(conn, 0, 7).unwrap(), 1);
        let left = recorded_balance_changes(conn, &[early.id, late.id, elsewhere.id]).unwrap();
        assert!(
            !left.contains_key(&early.id),
            "read before offset 7 of partition 0"
        );
        assert!(
            left.contains_key(&late.id),
            "offset 9 may still be redelivered"
        );
        assert!(left.contains_key(&elsewhere.id), "another partition");
    }
}
