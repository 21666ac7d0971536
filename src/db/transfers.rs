//! Queries of money transfers: `cmt` (outcomes by command id), the locked `balance`
//! rows, and the events written to the outbox ([`crate::db::outbox`] reads them).

use std::collections::HashMap;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Integer, Nullable, SmallInt, Text, Uuid as SqlUuid};
use uuid::Uuid;

use crate::db::schema::{balance, cmt};
use crate::domain::Iban;
use crate::domain::transfer::Account;

/// The recorded outcomes of these transfers: the reason of each failed one, None for
/// each confirmed one.
pub fn recorded_transfers(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Option<String>>> {
    let rows: Vec<(Uuid, Option<String>)> = cmt::table
        .filter(cmt::uuid.eq_any(ids))
        .select((cmt::uuid, cmt::reason))
        .load(conn)?;
    Ok(rows.into_iter().collect())
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

/// A transfer's outcome, recorded under its command id.
pub struct NewTransfer<'a> {
    pub uuid: Uuid,
    pub reason: Option<&'a str>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

/// A BalanceChanged event of a confirmed transfer, for the outbox.
pub struct NewBalanceChange<'a> {
    pub cmt_uuid: Uuid,
    pub position: i16,
    pub iban: &'a str,
    pub new_balance: i64,
    pub changed_by: i64,
    pub from_to: &'a [u8],
    pub description: &'a [u8],
}

/// Everything a batch of transfers writes, in one statement (one round trip instead of
/// three): the new amounts of the (locked) accounts it changed, the outcomes, and the
/// events, which get their `seq` in the order given.
pub fn write_transfers(
    conn: &mut PgConnection,
    amounts: &[(&str, i64)],
    outcomes: &[NewTransfer<'_>],
    events: &[NewBalanceChange<'_>],
) -> QueryResult<()> {
    if amounts.is_empty() && outcomes.is_empty() && events.is_empty() {
        return Ok(());
    }
    // Columns as arrays, one element per row: the statement's text is the same for
    // every batch size.
    let (ibans, new_amounts): (Vec<&str>, Vec<i64>) = amounts.iter().copied().unzip();
    diesel::sql_query(
        "WITH changed AS ( \
           UPDATE balance SET amount = c.amount \
           FROM unnest($1::text[], $2::bigint[]) AS c(iban, amount) \
           WHERE balance.iban = c.iban), \
         outcomes AS ( \
           INSERT INTO cmt (uuid, reason, source_partition, source_offset) \
           SELECT * FROM unnest($3::uuid[], $4::text[], $5::integer[], $6::bigint[])) \
         INSERT INTO cmt_balance_changed \
           (cmt_uuid, position, iban, new_balance, changed_by, from_to, description) \
         SELECT cmt_uuid, position, iban, new_balance, changed_by, from_to, description \
         FROM unnest($7::uuid[], $8::smallint[], $9::text[], $10::bigint[], $11::bigint[], \
                     $12::bytea[], $13::bytea[]) WITH ORDINALITY \
           AS e(cmt_uuid, position, iban, new_balance, changed_by, from_to, description, n) \
         ORDER BY n",
    )
    .bind::<Array<Text>, _>(ibans)
    .bind::<Array<BigInt>, _>(new_amounts)
    .bind::<Array<SqlUuid>, _>(outcomes.iter().map(|o| o.uuid).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(outcomes.iter().map(|o| o.reason).collect::<Vec<_>>())
    .bind::<Array<Nullable<Integer>>, _>(
        outcomes
            .iter()
            .map(|o| o.source_partition)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<BigInt>>, _>(
        outcomes.iter().map(|o| o.source_offset).collect::<Vec<_>>(),
    )
    .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.cmt_uuid).collect::<Vec<_>>())
    .bind::<Array<SmallInt>, _>(events.iter().map(|e| e.position).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(events.iter().map(|e| e.iban).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(events.iter().map(|e| e.new_balance).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(events.iter().map(|e| e.changed_by).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(events.iter().map(|e| e.from_to).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(events.iter().map(|e| e.description).collect::<Vec<_>>())
    .execute(conn)?;
    Ok(())
}
