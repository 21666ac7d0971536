//! Queries of money transfers: `cmt` (outcomes by command id), the locked `balance`
//! rows, and the events written to the outbox ([`crate::db::outbox`] reads them).

use std::collections::HashMap;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use uuid::Uuid;

use crate::db::schema::{balance, cmt, cmt_balance_changed};
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
