//! SPEC §5 ConfirmAccountCreation: the account type, the draw of a new account's IBAN
//! (a few tries when the drawn one is taken), and the answer recorded and given again.

use std::collections::HashSet;
use std::hash::Hash;

use rand::Rng;
use serde::Deserialize;

use uuid::Uuid;

use super::iban::{Iban, generate_token};

/// A ConfirmAccountCreation, as the rules need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountCreationCommand {
    pub id: Uuid,
    pub account_type: AccountType,
}

/// Credit limit of every new account: an account may go down to -500.00.
pub const NEW_ACCOUNT_LIMIT: i64 = -50_000;
/// How often account creation draws a new IBAN when the drawn one is taken, before it
/// answers `generated iban already exists, try again` (SPEC §5 allows a few tries).
pub const IBAN_ATTEMPTS: usize = 3;

/// `a_type` of SPEC §3: the Avro enum's symbols, stored as `AUTO` / `MANUAL` in the
/// `type` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AccountType {
    #[serde(rename = "AUTO")]
    Auto,
    #[serde(rename = "MANUAL")]
    Manual,
}

impl AccountType {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Auto => "AUTO",
            AccountType::Manual => "MANUAL",
        }
    }

    pub fn parse(text: &str) -> Option<AccountType> {
        match text {
            "AUTO" => Some(AccountType::Auto),
            "MANUAL" => Some(AccountType::Manual),
            _ => None,
        }
    }
}

/// What became of a ConfirmAccountCreation: the answer given, and given again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCreationOutcome {
    Confirmed {
        iban: String,
        token: String,
        account_type: AccountType,
    },
    Failed {
        reason: String,
    },
}

/// The answer when every IBAN drawn for a new account was taken (SPEC §5).
pub const IBAN_TAKEN: &str = "generated iban already exists, try again";
/// The answer, given again, to a recorded account creation that lacks its IBAN, token or
/// type: a row the JVM handler could not have written, answered as failed rather than
/// by inventing an account.
pub const INCOMPLETE_ACCOUNT_CREATION: &str = "account creation record is incomplete";
/// A new account's starting amount (SPEC §5); its limit is [`NEW_ACCOUNT_LIMIT`].
pub const NEW_ACCOUNT_AMOUNT: i64 = 0;

impl AccountCreationOutcome {
    /// SPEC §5 ConfirmAccountCreation, step 2: the IBAN and token drawn for the command,
    /// and whether that IBAN is taken (after the draws allowed, [`IBAN_ATTEMPTS`]).
    pub fn decide(iban: &Iban, token: &str, account_type: AccountType, taken: bool) -> Self {
        if taken {
            AccountCreationOutcome::Failed {
                reason: IBAN_TAKEN.to_string(),
            }
        } else {
            AccountCreationOutcome::Confirmed {
                iban: iban.to_string(),
                token: token.to_string(),
                account_type,
            }
        }
    }

    /// SPEC §5 ConfirmAccountCreation, step 1: the answer a recorded outcome gives again.
    pub fn recorded(
        reason: Option<String>,
        iban: Option<String>,
        token: Option<String>,
        account_type: Option<AccountType>,
    ) -> Self {
        match (reason, iban, token, account_type) {
            (None, Some(iban), Some(token), Some(account_type)) => {
                AccountCreationOutcome::Confirmed {
                    iban,
                    token,
                    account_type,
                }
            }
            (Some(reason), ..) => AccountCreationOutcome::Failed { reason },
            _ => AccountCreationOutcome::Failed {
                reason: INCOMPLETE_ACCOUNT_CREATION.to_string(),
            },
        }
    }
}

/// What the draw gave one new account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drawn {
    pub iban: Iban,
    pub token: String,
    /// Still taken after [`IBAN_ATTEMPTS`] draws: the command fails with [`IBAN_TAKEN`].
    pub taken: bool,
}

/// SPEC §5 ConfirmAccountCreation, step 2, for the new accounts of a batch (one per
/// key, keys distinct): draws an IBAN and a token for each, and draws again, up to
/// [`IBAN_ATTEMPTS`] times in all, for those whose IBAN is taken, that is held by an
/// existing account (`taken_among` says which of the candidates are) or drawn for
/// another account of the same batch. The draws are in key order.
pub fn draw_new_accounts<K: Copy + Eq + Hash, E>(
    keys: &[K],
    rng: &mut impl Rng,
    mut taken_among: impl FnMut(&[&Iban]) -> Result<HashSet<Iban>, E>,
) -> Result<Vec<(K, Drawn)>, E> {
    let mut drawn: Vec<(K, Drawn)> = keys
        .iter()
        .map(|key| {
            let draw = Drawn {
                iban: Iban::generate(rng),
                token: generate_token(rng),
                taken: true,
            };
            (*key, draw)
        })
        .collect();
    let mut claimed: HashSet<Iban> = HashSet::new();
    for attempt in 0..IBAN_ATTEMPTS {
        if attempt > 0 {
            for (_, draw) in drawn.iter_mut().filter(|(_, d)| d.taken) {
                draw.iban = Iban::generate(rng);
                draw.token = generate_token(rng);
            }
        }
        let candidates: Vec<&Iban> = drawn
            .iter()
            .filter(|(_, d)| d.taken)
            .map(|(_, d)| &d.iban)
            .collect();
        if candidates.is_empty() {
            break;
        }
        let existing = taken_among(&candidates)?;
        for (_, draw) in drawn.iter_mut().filter(|(_, d)| d.taken) {
            draw.taken = existing.contains(&draw.iban) || !claimed.insert(draw.iban.clone());
        }
    }
    Ok(drawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_account_gets_a_free_iban_drawn_again_when_taken() {
        let mut rng = rand::rng();
        let mut asked = 0;
        // The first two candidates of every look-up are taken.
        let drawn = draw_new_accounts(&[1, 2, 3], &mut rng, |candidates| {
            asked += 1;
            Ok::<_, ()>(
                candidates
                    .iter()
                    .take(2)
                    .map(|iban| (*iban).clone())
                    .collect(),
            )
        })
        .unwrap();
        assert_eq!(drawn.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 2, 3]);
        // Three draws: 3 candidates, then 2, then 2 again; after that both still fail.
        assert_eq!(asked, IBAN_ATTEMPTS);
        let taken: Vec<bool> = drawn.iter().map(|(_, d)| d.taken).collect();
        assert_eq!(taken, [true, true, false]);
        assert!(drawn.iter().all(|(_, d)| d.token.len() == 20));
    }

    /// Draws the same IBAN and token every time.
    struct SameDraws;

    impl rand::TryRng for SameDraws {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(0);
            Ok(())
        }
    }

    #[test]
    fn an_iban_drawn_twice_in_a_batch_goes_to_the_first_only() {
        let mut asked = 0;
        let drawn = draw_new_accounts(&["a", "b"], &mut SameDraws, |_| {
            asked += 1;
            Ok::<_, ()>(HashSet::new())
        })
        .unwrap();
        assert_eq!(drawn[0].1.iban, drawn[1].1.iban);
        assert!(!drawn[0].1.taken);
        assert!(
            drawn[1].1.taken,
            "drawn again twice, the same IBAN each time"
        );
        assert_eq!(asked, IBAN_ATTEMPTS);

        // A look-up that fails fails the draw.
        assert_eq!(
            draw_new_accounts(&[1], &mut SameDraws, |_| Err("down")),
            Err("down")
        );
    }

    #[test]
    fn a_new_account_is_confirmed_unless_its_drawn_iban_is_taken() {
        let iban = Iban::from_account_number(123_456_789);
        assert_eq!(
            AccountCreationOutcome::decide(
                &iban,
                "12345678901234567890",
                AccountType::Manual,
                false
            ),
            AccountCreationOutcome::Confirmed {
                iban: iban.to_string(),
                token: "12345678901234567890".into(),
                account_type: AccountType::Manual,
            }
        );
        assert_eq!(
            AccountCreationOutcome::decide(&iban, "12345678901234567890", AccountType::Auto, true),
            AccountCreationOutcome::Failed {
                reason: "generated iban already exists, try again".into()
            }
        );
    }

    #[test]
    fn a_recorded_account_creation_is_answered_as_recorded_or_as_incomplete() {
        let confirmed = AccountCreationOutcome::recorded(
            None,
            Some("NL66OPEN0000000000".into()),
            Some("t".into()),
            Some(AccountType::Auto),
        );
        assert!(matches!(
            confirmed,
            AccountCreationOutcome::Confirmed { .. }
        ));
        let failed =
            AccountCreationOutcome::recorded(Some("why".into()), Some("x".into()), None, None);
        assert_eq!(
            failed,
            AccountCreationOutcome::Failed {
                reason: "why".into()
            }
        );
        let incomplete = AccountCreationOutcome::recorded(
            None,
            Some("NL66OPEN0000000000".into()),
            None,
            Some(AccountType::Auto),
        );
        assert_eq!(
            incomplete,
            AccountCreationOutcome::Failed {
                reason: "account creation record is incomplete".into()
            }
        );
    }
}
