//! SPEC §5's IBANs and tokens: a valid Open Bank IBAN as a type, and the draws of a new
//! account's IBAN and token.

use std::fmt;

use rand::{Rng, RngExt};

/// The bank's own account, which always exists (created by the migrations).
pub const BANK_IBAN: &str = "NL66OPEN0000000000";
pub const BANK_TOKEN: &str = "00000000000000000000";
pub const BANK_STARTING_AMOUNT: i64 = 100_000_000_000_000_000;

/// A valid Open Bank IBAN: `NL` + 2 check digits + `OPEN` + 10 digits.
///
/// The only way to get one is [`Iban::parse`] (which checks the check digits) or
/// [`Iban::from_account_number`], so holding an `Iban` means it is valid.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iban(String);

impl Iban {
    /// Builds the IBAN of a 10-digit account number (0 ..= 9_999_999_999).
    pub fn from_account_number(number: u64) -> Iban {
        debug_assert!(number < 10_000_000_000);
        let digits = format!("{number:010}");
        Iban(format!("NL{:02}OPEN{digits}", check_digits(&digits)))
    }

    /// A valid open IBAN is 18 characters long and equals the IBAN rebuilt from its
    /// last 10 digits (SPEC §5).
    pub fn parse(candidate: &str) -> Option<Iban> {
        if candidate.len() != 18 || !candidate.is_ascii() {
            return None;
        }
        let digits = &candidate[8..];
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rebuilt = Iban::from_account_number(digits.parse().ok()?);
        (rebuilt.0 == candidate).then_some(rebuilt)
    }

    /// A fresh IBAN for a new account: `0` followed by 9 random digits.
    pub fn generate(rng: &mut impl Rng) -> Iban {
        Iban::from_account_number(rng.random_range(0..1_000_000_000))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iban({})", self.0)
    }
}

/// Check digits = 98 − (N mod 97), where N is `24251423` + the 10 digits + `232100`
/// (`OPEN` and `NL00` written as numbers, as ISO 13616 does).
fn check_digits(ten_digits: &str) -> u32 {
    let remainder = "24251423"
        .bytes()
        .chain(ten_digits.bytes())
        .chain("232100".bytes())
        .fold(0u32, |acc, digit| (acc * 10 + u32::from(digit - b'0')) % 97);
    98 - remainder
}

/// A new account's secret: 20 random decimal digits.
pub fn generate_token(rng: &mut impl Rng) -> String {
    (0..20)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_iban_is_valid_and_rebuilt_from_its_digits() {
        let bank = Iban::parse(BANK_IBAN).expect("the bank's IBAN is valid");
        assert_eq!(bank.as_str(), BANK_IBAN);
        assert_eq!(Iban::from_account_number(0).as_str(), BANK_IBAN);
    }

    #[test]
    fn wrong_check_digits_are_invalid() {
        assert_eq!(Iban::parse("NL83OPEN0104642752"), None);
        // The same account number with its right check digits is valid.
        let right = Iban::from_account_number(104_642_752);
        assert_ne!(right.as_str(), "NL83OPEN0104642752");
        assert_eq!(Iban::parse(right.as_str()), Some(right.clone()));
    }

    #[test]
    fn malformed_ibans_are_invalid() {
        for candidate in [
            "",
            "cash",
            "NL66OPEN000000000",
            "NL66OPEN00000000000",
            "NL66OPEN00000000x0",
            "NL66BANK0000000000",
            "DE66OPEN0000000000",
            "nl66open0000000000",
            "NL66OPEN000000000é",
            "NL-6OPEN0000000000",
        ] {
            assert_eq!(Iban::parse(candidate), None, "{candidate:?}");
        }
    }

    #[test]
    fn check_digits_match_iso_mod_97() {
        // ISO 13616: moving the first four characters to the end and writing letters as
        // numbers (N=23, L=21, O=24, P=25, E=14) gives a number that is 1 mod 97.
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let iban = Iban::generate(&mut rng);
            let rearranged = format!("{}{}", &iban.as_str()[4..], &iban.as_str()[..4]);
            let numeric: String = rearranged
                .chars()
                .map(|c| match c {
                    '0'..='9' => c.to_string(),
                    letter => (letter as u32 - 'A' as u32 + 10).to_string(),
                })
                .collect();
            let remainder = numeric
                .bytes()
                .fold(0u32, |acc, d| (acc * 10 + u32::from(d - b'0')) % 97);
            assert_eq!(remainder, 1, "{iban}");
        }
    }

    #[test]
    fn generated_ibans_are_valid_and_start_with_zero() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let iban = Iban::generate(&mut rng);
            assert_eq!(iban.as_str().len(), 18);
            assert!(iban.as_str().starts_with("NL"));
            assert_eq!(&iban.as_str()[4..9], "OPEN0");
            assert_eq!(Iban::parse(iban.as_str()), Some(iban));
        }
    }

    #[test]
    fn tokens_are_twenty_decimal_digits_and_differ() {
        let mut rng = rand::rng();
        let first = generate_token(&mut rng);
        let second = generate_token(&mut rng);
        for token in [&first, &second] {
            assert_eq!(token.len(), 20);
            assert!(token.bytes().all(|b| b.is_ascii_digit()), "{token}");
        }
        assert_ne!(first, second);
    }
}
