//! The mix of commands, like Open Bank's command generator's.

use open_bank_command_handler::domain::Iban;
use rand::RngExt;
use rand::rngs::StdRng;
use uuid::Uuid;

use crate::client::Transfer;

/// The bank's own account and its token: salaries come from it.
pub const BANK: (&str, &str) = ("NL66OPEN0000000000", "00000000000000000000");

/// The next command of the mix: salaries, cash in and out, shop payments,
/// transfers between accounts, and a few that must fail.
pub fn next_transfer(rng: &mut StdRng, accounts: &[(String, String)]) -> Transfer {
    let n = accounts.len();
    let (a, b) = (rng.random_range(0..n), rng.random_range(0..n - 1));
    let b = if b >= a { b + 1 } else { b };
    let (account, token) = accounts[a].clone();
    let other = accounts[b].0.clone();
    let roll = rng.random_range(0..100);
    let id = Uuid::new_v4();
    let transfer = |token: &str, amount: i64, from: &str, to: &str, description: &str| Transfer {
        id,
        token: token.to_string(),
        amount,
        from: from.to_string(),
        to: to.to_string(),
        description: description.to_string(),
    };
    let shop = Iban::from_account_number(9_000_000_000 + rng.random_range(0..50u64)).to_string();
    match roll {
        0..=24 => transfer(
            BANK.1,
            rng.random_range(100_000..300_000),
            BANK.0,
            &account,
            "salary",
        ),
        25..=39 => transfer(
            "",
            rng.random_range(1_000..20_000),
            "cash",
            &account,
            "deposit",
        ),
        40..=54 => transfer(
            &token,
            rng.random_range(1_000..10_000),
            &account,
            "cash",
            "withdrawal",
        ),
        55..=74 => transfer(
            &token,
            rng.random_range(100..5_000),
            &account,
            &shop,
            "shop",
        ),
        75..=94 => transfer(
            &token,
            rng.random_range(100..10_000),
            &account,
            &other,
            "transfer",
        ),
        95..=96 => transfer("99999999999999999999", 100, &account, &other, "wrong token"),
        97..=98 => transfer(&token, 1_000_000_000, &account, &other, "too much"),
        _ => transfer(&token, 100, &account, &account, "to self"),
    }
}
