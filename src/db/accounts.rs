//! Queries of account creation: `cac` (outcomes by command id) and new `balance` rows.

use std::collections::{HashMap, HashSet};

use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use crate::db::schema::{balance, cac};
use crate::domain::account::{NEW_ACCOUNT_AMOUNT, NEW_ACCOUNT_LIMIT};
use crate::domain::{AccountCreationOutcome, AccountType, Iban};

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
pub fn taken_ibans(conn: &mut PgConnection, candidates: &[&Iban]) -> QueryResult<HashSet<Iban>> {
    let texts: Vec<&str> = candidates.iter().map(|iban| iban.as_str()).collect();
    let rows: Vec<String> = balance::table
        .filter(balance::iban.eq_any(&texts))
        .select(balance::iban)
        .load(conn)?;
    Ok(rows.iter().filter_map(|text| Iban::parse(text)).collect())
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
